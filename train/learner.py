"""The one learner every training stage uses: SFT, GRPO and distillation differ only by loss and data.

Built on accelerate (fp32 or bf16 autocast; DeepSpeed ZeRO 1–3 when ``zero_stage > 0``). Optimizers: AdamW, or
Muon (DeepSeek-V4's hybrid Newton–Schulz, ``train.muon``) on matrix parameters — including transformers 5's
fused 3-D expert tensors — with AdamW on embeddings, the output head, norms, biases and router gates.

Checkpoints hold everything resumption needs: weights, optimizer, scheduler, RNG states and the caller's own state
(data position, step); see ``save`` / ``load``.

A ``Learner`` is one rank. With ``distributed=True`` it is one rank of a torch.distributed group whose environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) the caller set: ``train.ranks`` builds
such groups (``make_learner``; ``LearnerGroup`` drives the ranks, data-parallel over the global batch). The
single-rank learner (``distributed=False``, the default) is unchanged by that.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core.where import use_cuda

from .muon import HybridMuon

# parameters that stay on AdamW under Muon: embeddings, output head, norms, biases, router gates
ADAMW_ONLY = re.compile(r"(embed|lm_head|norm|\.bias$|\.gate\.weight$|router|wte|wpe)")


def split_params(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """(muon names, adamw names). Muon takes every matrix (ndim ≥ 2, 3-D experts included) not in ADAMW_ONLY."""
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (muon if p.ndim >= 2 and not ADAMW_ONLY.search(name) else adamw).append(name)
    return muon, adamw


def build_optimizer(model: torch.nn.Module, cfg) -> list[torch.optim.Optimizer]:
    params = dict(model.named_parameters())
    adam_kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=1e-8)
    if cfg.optimizer == "adamw":
        return [torch.optim.AdamW([p for p in params.values() if p.requires_grad], **adam_kw)]
    muon_names, adam_names = split_params(model)
    return [HybridMuon([params[n] for n in muon_names], lr=cfg.muon_lr, weight_decay=cfg.weight_decay),
            torch.optim.AdamW([params[n] for n in adam_names], **adam_kw)]


def lr_lambda(cfg, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.schedule == "cosine" else 1 - frac
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape
    return f


class _MultiOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one (Muon + AdamW), so accelerate and schedulers see a single object."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]
        self.defaults = {}
        self.state = {}

    def step(self, closure=None):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, sd):
        for o, s in zip(self.optimizers, sd["optimizers"]):
            o.load_state_dict(s)


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    lr: float
    metrics: dict


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Learner:
    """Wraps a causal LM, its optimizer and schedule. ``step(loss_fn, micro_batches)`` is the only training entry."""

    def __init__(self, model_dir: str | Path, cfg, total_steps: int, seed: int = 0, distributed: bool = False):
        """``distributed``: this is one rank of a group (see the module docstring); the process-group environment
        must be set. Every rank loads the same weights and seeds the same RNGs."""
        from accelerate import Accelerator
        from transformers import AutoModelForCausalLM

        self.cfg, self.total_steps = cfg, total_steps
        seed_everything(seed)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.model.config.use_cache = False
        if cfg.qat == "mxfp4":
            from rollout.fp4 import enable_qat

            enable_qat(self.model)
        plugin = None
        if cfg.zero_stage > 0:
            from accelerate.utils import DeepSpeedPlugin

            if cfg.optimizer == "muon":  # ZeRO hands the optimizer flat 1-D partitions; Newton-Schulz needs matrices
                raise ValueError("learner: optimizer muon does not run under DeepSpeed ZeRO (zero_stage > 0); "
                                 "use optimizer: adamw with ZeRO, or zero_stage: 0 with Muon")

            if not distributed:
                for k, v in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port())), ("RANK", "0"),
                             ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
                    os.environ.setdefault(k, v)
            plugin = DeepSpeedPlugin(zero_stage=cfg.zero_stage, gradient_clipping=cfg.grad_clip or None)
            plugin.deepspeed_config["zero_allow_untested_optimizer"] = True
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
        extra = {}
        if distributed:
            from accelerate.utils import InitProcessGroupKwargs

            # the scheduler steps once per learner step (accelerate would step it once per process);
            # on CPU name gloo: left to itself accelerate picks MPI when torch has it, and under DeepSpeed on CPU it
            # initializes no backend of its own and then counts one process on every rank
            extra["step_scheduler_with_optimizer"] = False
            if not use_cuda():
                extra["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
        # cpu=True would silently drop the DeepSpeed plugin; without CUDA, DeepSpeed picks its CPU accelerator
        self.accelerator = Accelerator(cpu=plugin is None and not use_cuda(), deepspeed_plugin=plugin,
                                       mixed_precision="bf16" if cfg.precision == "bf16" else "no", **extra)
        opts = build_optimizer(self.model, cfg)
        optimizer = opts[0] if len(opts) == 1 else _MultiOptimizer(opts)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(self.model, optimizer, scheduler)
        self.step_count = 0

    @property
    def device(self) -> torch.device:
        """Where the learner's batches go (every stage moves its tensors here before a step)."""
        return self.accelerator.device

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def step(self, loss_fn: Callable, micro_batches: list[dict]) -> StepResult:
        """One optimizer step over ``micro_batches`` (gradient accumulation).

        ``loss_fn(model, mb) -> (loss_sum, metrics)`` returns a micro-batch's loss summed over its units (tokens
        or sequences); each micro-batch carries its number of units as ``mb["weight"]`` (a dict) or ``mb.weight``
        (a typed batch record). The step minimises
        Σ loss_sum / Σ weight, so the result does not depend on how a batch is split into micro-batches."""
        total = sum(batch_weight(mb) for mb in micro_batches)
        part = self.step_part(loss_fn, micro_batches, total)
        return StepResult(loss=part["loss_sum"] / max(total, 1e-9), grad_norm=part["grad_norm"], lr=part["lr"],
                          metrics=part["metrics"])

    def step_part(self, loss_fn: Callable, micro_batches: list, total: float, n_real: int | None = None) -> dict:
        """This rank's share of one optimizer step: backward of Σ loss_sum / ``total`` over its micro-batches,
        ``total`` being the weight of the GLOBAL batch (all ranks), then the optimizer step.

        Gradients are averaged over the ranks (DDP and DeepSpeed both divide the sum by the world size), so each
        rank scales its loss by the world size: the averaged gradient is then that of Σ_all loss_sum / total.
        Micro-batches from index ``n_real`` on are padding (every rank must run the same number of forwards and
        backwards: ZeRO-3 gathers parameters and DDP syncs buffers in each): they run with weight 0 and count in
        no sum. Returns ``loss_sum`` (Σ of this rank's loss sums), ``metrics`` (Σ v · weight / total),
        ``grad_norm`` and ``lr``."""
        self.model.train()
        n_real = len(micro_batches) if n_real is None else n_real
        world = self.accelerator.num_processes
        denom = max(total, 1e-9)
        weights = [batch_weight(mb) for mb in micro_batches]
        loss_acc, metrics_acc = 0.0, {}
        deepspeed = self.accelerator.distributed_type.value == "DEEPSPEED"
        for i, mb in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            if deepspeed:  # DeepSpeed's engine steps on every backward at a boundary: only the last micro-batch is one
                self.accelerator.gradient_state._set_sync_gradients(last)
            # DDP: all-reduce once, at the last micro-batch (ZeRO reduces its partitions on its own)
            sync = (self.model.no_sync() if world > 1 and not deepspeed and not last and hasattr(self.model, "no_sync")
                    else contextlib.nullcontext())
            with sync:
                with self.accelerator.autocast():
                    loss_sum, metrics = loss_fn(self.model, mb)
                if i >= n_real:
                    loss = loss_sum * 0.0
                elif world > 1:
                    loss = loss_sum / denom * world
                else:
                    loss = loss_sum / denom
                self.accelerator.backward(loss)
            if i >= n_real:
                continue
            loss_acc += float(loss_sum.detach())
            for k, v in metrics.items():
                metrics_acc[k] = metrics_acc.get(k, 0.0) + float(v) * weights[i] / denom
        if deepspeed:
            self.accelerator.gradient_state._set_sync_gradients(True)
        grad_norm = 0.0
        if self.cfg.grad_clip and not deepspeed:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
        elif deepspeed:  # the engine clipped and stepped inside the last backward
            grad_norm = float(self.accelerator.deepspeed_engine_wrapped.get_global_grad_norm() or 0.0)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return {"loss_sum": loss_acc, "metrics": metrics_acc, "grad_norm": grad_norm, "lr": lr}

    @torch.no_grad()
    def map(self, fn: Callable, micro_batches: list, autocast: bool = False) -> list:
        """``[fn(model, mb) for mb in micro_batches]`` without gradients, in eval mode (e.g. π_old log-probs);
        ``autocast``: under the learner's mixed precision, as in ``step``."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.accelerator.autocast() if autocast else contextlib.nullcontext():
                return [fn(self.model, mb) for mb in micro_batches]
        finally:
            self.model.train(was_training)

    def close(self) -> None:
        """Nothing to release for one in-process rank (``LearnerGroup.close`` stops the others)."""

    def on_ranks(self, fn: Callable, *args) -> list:
        """``[fn(self, *args)]``: the one-rank form of ``LearnerGroup.on_ranks`` (per-rank setup)."""
        return [fn(self, *args)]

    @property
    def ranks(self) -> int:
        return self.accelerator.num_processes

    # ------------------------------------------------------------------------------------------------- weights
    @property
    def _zero_stage(self) -> int:
        return self.cfg.zero_stage if self.accelerator.distributed_type.value == "DEEPSPEED" else 0

    @property
    def zero3(self) -> bool:
        return self.accelerator.distributed_type.value == "DEEPSPEED" and self.cfg.zero_stage == 3

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Clean (un-parametrized) weights, e.g. for weight sync to a rollout engine. Under ZeRO-3 a collective:
        every rank calls it (and every rank gets the full weights)."""
        model = self.unwrapped
        if self.zero3:  # parameters are partitioned: gather them (a collective; every rank calls it), then copy
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
                return {k: v.detach().clone() for k, v in self._state_dict(model).items()}
        return self._state_dict(model)

    @property
    def wire_dtype(self) -> torch.dtype | None:
        """The dtype floating weights travel to an engine in: the training dtype (bf16 for a bf16 learner, whose
        masters are fp32: never upcast on the wire); None (as stored) for an fp32 learner."""
        return torch.bfloat16 if self.cfg.precision == "bf16" else None

    def rollout_state_dict(self, fp4: bool):
        """The weights a rollout engine computes with (a ``rollout.weight_sync.RolloutWeights``): the learner's,
        MXFP4-dequantized on the FP4 targets (the QAT targets when QAT is on, else the model's default ones) when
        ``fp4``, with the learner's ``wire_dtype``. Nothing is gathered here: under ZeRO-3 each bucket is gathered
        when the push sends it (``rollout_gather``, a collective every rank joins), one bucket at a time."""
        from rollout.weight_sync import RolloutWeights

        if not self.zero3:
            if fp4:
                from rollout.fp4 import quantized_state_dict

                return RolloutWeights.of(quantized_state_dict(self.unwrapped), self.wire_dtype)
            return RolloutWeights.of(self._state_dict(self.unwrapped), self.wire_dtype)
        live, _ = self._zero3_live(fp4)
        meta = {k: (tuple(getattr(v, "ds_shape", v.shape)), v.dtype) for k, v in live.items()}
        return RolloutWeights(meta, lambda names: self.rollout_gather(fp4, names), self.wire_dtype)

    def _zero3_live(self, fp4: bool) -> tuple[dict, set]:
        """Under ZeRO-3: clean name -> the live parameter or buffer (partitioned parameters are 0-element
        placeholders with ``ds_shape``), and the FP4 targets' names when ``fp4`` (chosen by name: the shapes are
        not there to check until a gather)."""
        from rollout.fp4 import clean_param_name, default_patterns, is_qat_enabled, qat_targets

        model = self.unwrapped
        live = {clean_param_name(k): v for k, v in model.state_dict(keep_vars=True).items()}
        targets: set = set()
        if fp4:
            if is_qat_enabled(model):
                targets = set(qat_targets(model))
            else:
                pats = [re.compile(p) for p in default_patterns(model)]
                targets = {k for k in live if any(p.search(k) for p in pats)}
        return live, targets

    @torch.no_grad()
    def rollout_gather(self, fp4: bool, names: list[str]) -> dict[str, torch.Tensor]:
        """Under ZeRO-3: the whole tensors of ``names`` (one bucket), copied out of a gather of exactly their
        parameters (a collective: every rank calls it with the same names), MXFP4-dequantized on the FP4 targets
        when ``fp4``. Without ZeRO-3: the same tensors, no collective."""
        if not self.zero3:
            return self.rollout_state_dict(fp4).gather(names)
        import deepspeed

        from rollout.fp4 import _qdq

        live, targets = self._zero3_live(fp4)
        params = list({id(live[n]): live[n] for n in names if hasattr(live[n], "ds_id")}.values())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {n: (_qdq(live[n].detach()) if n in targets else live[n].detach().clone()) for n in names}

    def _state_dict(self, model) -> dict[str, torch.Tensor]:
        if self.cfg.qat == "mxfp4":
            from rollout.fp4 import master_state_dict

            return master_state_dict(model)
        return {k: v.detach() for k, v in model.state_dict().items()}

    def save_pretrained(self, folder: Path, tokenizer=None) -> None:
        """A Hugging Face folder (model + tokenizer) loadable by ``from_pretrained``."""
        folder = Path(folder)
        model = self.unwrapped
        sd = self.state_dict()                      # every rank joins the gather under ZeRO-3; rank 0 writes
        if not self.accelerator.is_main_process:
            return
        model.save_pretrained(str(folder), state_dict=sd, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))

    # --------------------------------------------------------------------------------------------- checkpoints
    def save(self, folder: Path, extra: dict) -> None:
        """Everything needed to continue exactly: weights, optimizer, scheduler, RNG states, ``extra``.

        In a group every rank calls it with the same (shared) folder: under DeepSpeed each rank writes its own
        shard (a collective); otherwise the replicated weights and optimizer are written by rank 0 alone. Rank 0
        writes ``trainer_state.pt`` (with its RNG state) and ``extra.json``; rank r > 0 its RNG state to
        ``rng_rank{r}.pt``."""
        folder = Path(folder)
        rank = self.accelerator.process_index
        if self.accelerator.distributed_type.value == "DEEPSPEED":
            self.accelerator.save_state(str(folder / "accelerate"))
        elif rank == 0:
            from safetensors.torch import save_model

            # save_model keeps one copy of tensors that share memory (tied embeddings: SmolLM2, Llama 3.2, Gemma)
            save_model(self.unwrapped, str(folder / "model.safetensors"))
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        if rank == 0:
            from .ckpt_world import write_world     # the world size the checkpoint was written at

            write_world(folder, self.accelerator.num_processes, self._zero_stage)
            torch.save({"scheduler": self.scheduler.state_dict(), "rng": rng_state(), "step": self.step_count},
                       folder / "trainer_state.pt")
            (folder / "extra.json").write_text(json.dumps(extra))
        else:
            torch.save({"rng": rng_state()}, folder / f"rng_rank{rank}.pt")

    def load(self, folder: Path) -> dict:
        """Restore a ``save``d folder (in a group: every rank calls it). A plain checkpoint resumes at any world
        size; a DeepSpeed one only at the world size and ZeRO stage it was saved with, else a one-line ValueError
        (``train.ckpt_world``). Returns the ``extra`` it was saved with."""
        from .ckpt_world import check_world

        folder = Path(folder)
        check_world(folder, self.accelerator.num_processes, self._zero_stage)
        rank = self.accelerator.process_index
        if self.accelerator.distributed_type.value == "DEEPSPEED":
            self.accelerator.load_state(str(folder / "accelerate"))
        else:
            from safetensors.torch import load_model

            load_model(self.unwrapped, str(folder / "model.safetensors"))   # (restores tied tensors)
            self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
        st = torch.load(folder / "trainer_state.pt", weights_only=False)
        self.scheduler.load_state_dict(st["scheduler"])
        own = folder / f"rng_rank{rank}.pt"
        set_rng_state(torch.load(own, weights_only=False)["rng"] if rank > 0 and own.exists() else st["rng"])
        self.step_count = st["step"]
        return json.loads((folder / "extra.json").read_text())


def batch_weight(mb) -> float:
    """A micro-batch's number of loss units: ``mb["weight"]`` (a dict) or ``mb.weight`` (a typed record)."""
    return float(mb["weight"] if isinstance(mb, dict) else mb.weight)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, numpy and torch CPU generators, and every visible GPU's CUDA generator when this process uses CUDA
    (dropout and sampling on the GPU draw from those: without them a resume is not exact on GPU)."""
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():          # never initializes CUDA (a zero-GPU process on a GPU node)
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if st.get("cuda") and use_cuda():
        for i, s in enumerate(st["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
