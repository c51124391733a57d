"""Engines by name, and the engine a stage's ``engine`` section asks for.

``make_engine("hf" | "vllm", **kwargs)`` builds one directly (the vLLM engine is imported only when asked for).
``rollout_engine(cfg, model_dir, tok, fleet, who)`` is what stages call: ``hf`` builds the in-process transformers
engine on ``model_dir`` (with MXFP4-dequantized weights when ``cfg.fp4``); ``vllm`` leases an engine of the run's
fleet (``rollout.fleet``). Either way the engine has ``.fp4`` (whether the weights a stage pushes must be
MXFP4-dequantized: ``Learner.rollout_state_dict(engine.fp4)``) and ``.describe()`` (the manifest's ``rollout``
record).
"""
from __future__ import annotations

from pathlib import Path

from .engine import Engine


def make_engine(name: str, **kwargs) -> Engine:
    if name == "hf":
        from .hf_engine import HFEngine

        return HFEngine(**kwargs)
    if name == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(**kwargs)
    raise ValueError(f"unknown engine {name!r}; expected one of hf, vllm")


def rollout_engine(cfg, model_dir, tok, fleet=None, who: str = "stage", device=None) -> Engine:
    """The engine a stage's ``engine`` section (``rollout.config.EngineConfig``) asks for, serving ``model_dir``
    (``hf``: on ``device``, the stage's learner device by default in the drivers)."""
    if cfg.kind == "vllm":
        if fleet is None:
            raise ValueError(f"{who}: engine.kind vllm leases an engine of the run's fleet, but this run has no "
                             "fleet (add a `fleet` section to the recipe)")
        from .fleet import LeasedEngine

        engine = LeasedEngine(fleet, who)
        engine.load_weights(folder_weights(model_dir, engine.fp4))
        return engine
    engine = make_engine("hf", model_path=str(model_dir), tokenizer=tok, max_batch=cfg.max_batch)
    if device is not None:
        engine.model.to(device)
    engine.fp4 = cfg.fp4
    if cfg.fp4:
        from .fp4 import quantized_state_dict

        engine.load_weights(quantized_state_dict(engine.model))
    return engine


def folder_weights(folder, fp4: bool) -> dict:
    """A Hugging Face folder's weights, clean-named as the learner's state dict (MXFP4-dequantized on the FP4
    targets when ``fp4``): what an engine leased for another model is given to serve this one."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(Path(folder)), dtype=torch.float32)
    if fp4:
        from .fp4 import quantized_state_dict

        return quantized_state_dict(model)
    return {k: v.detach() for k, v in model.state_dict().items()}


def describe(engine) -> dict:
    """The manifest's ``rollout`` record of an engine: which engine served the stage, and with which weights."""
    if hasattr(engine, "describe"):
        return engine.describe()
    fp4 = bool(getattr(engine, "fp4", False))
    return {"engine": getattr(engine, "name", type(engine).__name__), "fp4": fp4, "actor": None,
            "served": "mxfp4-dequantized (in-process transformers)" if fp4 else "full precision"}
