"""Export a Hugging Face checkpoint in compressed-tensors' ``MXFP4A16`` format (weight-only MXFP4, group 32).

Layout written (what ``compressed_tensors``' ``mxfp4-pack-quantized`` compressor produces and vLLM reads):

* for every quantized Linear ``<m>``: ``<m>.weight_packed`` uint8 ``[out, in/2]`` (low nibble = even column) and
  ``<m>.weight_scale`` uint8 E8M0 ``[out, in/32]``; no ``weight_global_scale`` / zero point (symmetric, MX);
* every other tensor as ``save_pretrained`` writes it;
* ``config.json["quantization_config"]``: written by ``compressed_tensors.ModelCompressor.update_config`` from the
  ``MXFP4A16`` preset scheme, ``targets=["Linear"]``, ``format="mxfp4-pack-quantized"``, status ``compressed`` and an
  ``ignore`` list naming every 2-D weight that stays in high precision (attention, router, embeddings, head).

Fused MoE experts: transformers 5 keeps Qwen3-MoE experts as 3-D parameters (``experts.gate_up_proj [E, 2I, H]``),
but ``save_pretrained`` converts them back to the per-expert checkpoint layout
(``experts.<e>.gate_proj.weight [I, H]`` ...), which is what vLLM's loaders expect. compressed-tensors'
compressors only handle 2-D ``weight`` tensors of ``nn.Linear``/``nn.Embedding`` modules
(``COMPRESSIBLE_MODULE_TYPES``; ``NVFP4PackedCompressor.decompress`` unpacks with ``m, n = packed.shape``), so
they cannot compress the fused 3-D parameters in a model. We therefore quantize the per-expert 2-D tensors of the
saved checkpoint ourselves with :func:`rollout.fp4.quantize_mxfp4` (bitwise the same layout;
blocks run along the input dim so a slice of a fused tensor quantizes exactly as the fused tensor does) and let the
test decompress them with compressed-tensors' own ``MXFP4PackedCompressor.decompress``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from rollout.fp4 import disable_qat, enable_qat, qat_targets, quantize_mxfp4, select_targets

__all__ = ["export_mxfp4_checkpoint", "mxfp4a16_quantization_config", "checkpoint_key_to_param"]

FORMAT = "mxfp4-pack-quantized"

# per-expert checkpoint projection -> transformers-5 fused parameter
_FUSED = {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "down_proj": "down_proj",
          "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"}
_EXPERT_KEY = re.compile(r"^(?P<prefix>.*\.experts)\.\d+\.(?P<proj>[A-Za-z0-9_]+)\.weight$")


def checkpoint_key_to_param(key: str, param_names: set[str]) -> str | None:
    """Model parameter (clean name) a checkpoint tensor comes from, or None if not found."""
    if key in param_names:
        return key
    m = _EXPERT_KEY.match(key)
    if m and m.group("proj") in _FUSED:
        fused = f"{m.group('prefix')}.{_FUSED[m.group('proj')]}"
        if fused in param_names:
            return fused
    return None


def mxfp4a16_quantization_config(ignore: Iterable[str]):
    """compressed-tensors ``QuantizationConfig`` for weight-only MXFP4 on Linear layers, from its MXFP4A16 preset."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, preset_name_to_scheme

    scheme = preset_name_to_scheme("MXFP4A16", ["Linear"])
    scheme.format = FORMAT
    return QuantizationConfig(
        config_groups={"group_0": scheme},
        format=FORMAT,
        quantization_status=QuantizationStatus.COMPRESSED,
        ignore=sorted(ignore),
    )


def _safetensors_files(out: Path) -> list[Path]:
    index = out / "model.safetensors.index.json"
    if index.exists():
        return sorted({out / f for f in json.loads(index.read_text())["weight_map"].values()})
    return [out / "model.safetensors"]


@torch.no_grad()
def export_mxfp4_checkpoint(model_dir_or_model: str | os.PathLike | nn.Module, tokenizer, out_dir: str | os.PathLike,
                            patterns: Iterable[str] | None = None) -> dict:
    """Write ``out_dir`` as an MXFP4A16 compressed-tensors checkpoint; returns a summary dict.

    ``model_dir_or_model``: a folder (loaded with ``AutoModelForCausalLM``) or a model (QAT parametrizations, if any,
    are removed for saving and put back afterwards). ``tokenizer``: a tokenizer, a folder, or None. ``patterns``:
    target patterns (default :func:`rollout.fp4.default_patterns`), matched against the model's clean parameter names;
    the checkpoint tensors derived from those parameters are quantized.
    """
    from compressed_tensors.compressors import ModelCompressor
    from safetensors.torch import load_file, save_file

    if isinstance(model_dir_or_model, nn.Module):
        model = model_dir_or_model
    else:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(model_dir_or_model)
        if tokenizer is None:
            tokenizer = model_dir_or_model if (Path(model_dir_or_model) / "tokenizer_config.json").exists() else None
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    qat_names = qat_targets(model)
    if qat_names:
        disable_qat(model)
    try:
        targets = set(select_targets(model, patterns))
        param_names = {n for n, _ in model.named_parameters()}
        model.save_pretrained(out)
    finally:
        if qat_names:
            enable_qat(model, [rf"^{re.escape(n)}$" for n in qat_names])
    if tokenizer is not None:
        tokenizer.save_pretrained(out)

    quantized, ignore, covered = [], [], set()
    weight_map = {}
    for f in _safetensors_files(out):
        tensors = load_file(f)
        new = {}
        for key, t in tensors.items():
            src = checkpoint_key_to_param(key, param_names) if key.endswith(".weight") else None
            if src is not None and src in targets:
                if t.ndim != 2:
                    raise ValueError(f"{key}: expected a 2-D checkpoint weight, got {tuple(t.shape)}")
                packed, scales = quantize_mxfp4(t)
                mod = key[: -len(".weight")]
                new[f"{mod}.weight_packed"] = packed
                new[f"{mod}.weight_scale"] = scales
                quantized.append(mod)
                covered.add(src)
            else:
                new[key] = t
                if key.endswith(".weight") and t.ndim == 2:
                    ignore.append(key[: -len(".weight")])
        save_file(new, f, metadata={"format": "pt"})
        weight_map.update({k: f.name for k in new})
    missing = targets - covered
    if missing:
        raise RuntimeError(f"targets not found in the saved checkpoint (unknown checkpoint naming?): {sorted(missing)}")
    index = out / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = dict(sorted(weight_map.items()))
        index.write_text(json.dumps(data, indent=2))

    ModelCompressor(quantization_config=mxfp4a16_quantization_config(ignore)).update_config(str(out))
    return {"out_dir": str(out), "quantized_modules": sorted(quantized), "ignore": sorted(ignore),
            "targets": sorted(targets)}
