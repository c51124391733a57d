"""MXFP4 (OCP Microscaling FP4) weights: quantize / dequantize / pack, fake-quant for QAT, target selection.

Format (OCP MX spec v1.0, the layout compressed-tensors' ``mxfp4-pack-quantized`` format and vLLM use):

* blocks of 32 consecutive values along the **last (input) dimension** share one scale;
* the scale is a power of two stored as E8M0 (uint8 biased exponent, bias 127):
  ``scale = 2 ** (floor(log2(amax)) - 2)`` where ``amax`` is the block's largest magnitude and 2 = emax of E2M1;
* each element is FP4 E2M1 (sign + magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}), chosen by round-to-nearest-even
  of ``w / scale`` on that grid, magnitudes above 6 clamped to 6;
* an element's 4-bit code is ``sign << 3 | magnitude_index`` (index into the grid above); two codes share a byte,
  the **even** element in the low nibble, the odd one in the high nibble
  (``compressed_tensors.compressors.nvfp4.helpers.pack_fp4_to_uint8``).

A weight ``[..., K]`` becomes ``packed uint8 [..., K/2]`` and ``scales uint8 [..., K/32]``; this works the same for
2-D ``nn.Linear`` weights ``[out, in]`` and transformers-5 fused MoE experts ``[E, out, in]`` (Qwen3-MoE
``experts.gate_up_proj [E, 2I, H]``, ``experts.down_proj [E, H, I]``: ``F.linear(x, w[e])``, so in = last dim).
Since blocks never cross rows, quantizing a fused expert tensor equals quantizing each expert's slice separately.

QAT: :func:`enable_qat` registers a ``torch.nn.utils.parametrize`` parametrization on every target so the forward
sees ``fake_quant_mxfp4(master)`` while gradients flow straight through to the full-precision master parameter
(the same ``nn.Parameter`` object the optimizer holds). :func:`master_state_dict` / :func:`quantized_state_dict`
give clean (un-parametrized) names for saving and for weight sync.
"""
from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "BLOCK",
    "E2M1_VALUES",
    "MOE_EXPERT_PATTERNS",
    "DENSE_MLP_PATTERNS",
    "quantize_mxfp4",
    "dequantize_mxfp4",
    "fake_quant_mxfp4",
    "mxfp4_codes",
    "default_patterns",
    "target_patterns",
    "select_target_names",
    "select_targets",
    "enable_qat",
    "disable_qat",
    "is_qat_enabled",
    "qat_targets",
    "master_state_dict",
    "quantized_state_dict",
    "clean_param_name",
]

BLOCK = 32
E8M0_BIAS = 127
E2M1_EMAX = 2
# magnitude index -> value; code = sign << 3 | index
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_CODE_TO_FLOAT = torch.tensor(list(E2M1_VALUES) + [-v for v in E2M1_VALUES], dtype=torch.float32)
# byte -> (value of low nibble, value of high nibble)
_BYTE_TO_PAIR = torch.stack((_CODE_TO_FLOAT[torch.arange(256) & 0xF], _CODE_TO_FLOAT[torch.arange(256) >> 4]), -1)

# Patterns are searched (re.search) in clean parameter names such as
# ``model.layers.0.mlp.experts.gate_up_proj`` or ``model.layers.0.mlp.gate_proj.weight``.
# Routed experts only (shared experts stay in high precision, as the experts that QAT targets in DeepSeek-V4).
MOE_EXPERT_PATTERNS = (
    r"(^|\.)experts\.(gate_up_proj|down_proj|gate_proj|up_proj|w1|w2|w3)$",           # fused 3-D (transformers 5)
    r"(^|\.)experts\.\d+\.(gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$",           # per-expert nn.Linear
)
DENSE_MLP_PATTERNS = (r"(^|\.)mlp\.(gate_proj|up_proj|down_proj)\.weight$",)


# ----------------------------------------------------------------------------------------------------------------
# Quantize / dequantize
# ----------------------------------------------------------------------------------------------------------------
def _check_last_dim(k: int) -> None:
    if k % BLOCK != 0:
        raise ValueError(f"MXFP4 needs the last (input) dimension divisible by {BLOCK}, got {k}")


def _block_exponent(blocks: torch.Tensor) -> torch.Tensor:
    """Unbiased shared exponent per block: floor(log2(amax)) - emax(E2M1), clamped to E8M0's range; int32."""
    amax = blocks.abs().amax(dim=-1)
    # frexp: amax = m * 2**e with m in [0.5, 1)  ->  floor(log2(amax)) = e - 1 (exact, subnormals included)
    _, e = torch.frexp(amax)
    exp = e.to(torch.int32) - 1 - E2M1_EMAX
    exp = torch.where(amax > 0, exp, torch.full_like(exp, -E8M0_BIAS))   # all-zero block: smallest scale
    return exp.clamp_(-E8M0_BIAS, E8M0_BIAS)                                # 255 (NaN) is never produced


def mxfp4_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpacked 4-bit codes ``uint8 [..., K]`` (sign << 3 | magnitude index) and unbiased exponents ``int32
    [..., K/32]``."""
    k = w.shape[-1]
    _check_last_dim(k)
    blocks = w.detach().float().reshape(*w.shape[:-1], k // BLOCK, BLOCK)
    exp = _block_exponent(blocks)
    # divide by 2**exp exactly (ldexp by the negated exponent; both scale factors are powers of two)
    a = blocks.abs().mul_(_exp2(-exp, torch.float32).unsqueeze(-1))
    # round to nearest even on {0, .5, 1, 1.5, 2, 3, 4, 6}: a midpoint goes to the neighbour with an even index,
    # i.e. strict '>' at midpoints whose lower neighbour's index is even (0.25, 1.25, 2.5, 5), '>=' where the upper
    # one's is (0.75, 1.75, 3.5); everything above 5 (including above 6) -> 6: the clamp. (Seven in-place compares
    # measured faster on CPU than torch.bucketize, float rounding tricks or fp32 bit manipulation.)
    idx = (a > 0.25).to(torch.uint8)
    idx += a >= 0.75
    idx += a > 1.25
    idx += a >= 1.75
    idx += a > 2.5
    idx += a >= 3.5
    idx += a > 5.0
    idx |= torch.signbit(blocks).to(torch.uint8) << 3
    return idx.reshape(w.shape), exp


def quantize_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [..., K]`` -> ``(packed uint8 [..., K/2], scales uint8 E8M0 [..., K/32])``.

    Low nibble = element 2j, high nibble = element 2j+1 (compressed-tensors' ``pack_fp4_to_uint8`` order).
    """
    codes, exp = mxfp4_codes(w)
    pairs = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    packed = pairs[..., 0] | (pairs[..., 1] << 4)
    scales = (exp + E8M0_BIAS).to(torch.uint8)
    return packed.contiguous(), scales


def unpack_mxfp4(packed: torch.Tensor) -> torch.Tensor:
    """``packed uint8 [..., K/2]`` -> codes ``uint8 [..., K]``."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)


def dequantize_mxfp4(packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Inverse of :func:`quantize_mxfp4`: ``w [..., K]`` in ``dtype``.

    Computed exactly in fp32 (value * 2**(scale - 127)) and then cast; every MXFP4 value is exact in bf16/fp32,
    so the result is bitwise what compressed-tensors' decompress gives (it computes in bf16).
    """
    k = packed.shape[-1] * 2
    if scales.shape[-1] * BLOCK != k or scales.shape[:-1] != packed.shape[:-1]:
        raise ValueError(f"scales {tuple(scales.shape)} do not match packed {tuple(packed.shape)}")
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    # bf16/fp32: products E2M1 x 2^k are exact in the target dtype, compute there; others (fp16) via fp32
    cdt = dtype if dtype in (torch.float32, torch.bfloat16) else torch.float32
    lut = _BYTE_TO_PAIR.to(device=packed.device, dtype=cdt)
    vals = lut.index_select(0, packed.reshape(-1).to(torch.int32))
    vals = vals.reshape(*packed.shape[:-1], k // BLOCK, BLOCK)
    out = vals * _exp2(scales.to(torch.int32) - E8M0_BIAS, cdt).unsqueeze(-1)
    return out.reshape(*packed.shape[:-1], k).to(dtype)


def _exp2(e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Exact 2**e (int tensor, -127 <= e <= 127) in fp32/bf16."""
    return torch.ldexp(torch.ones((), dtype=torch.float32, device=e.device), e.to(torch.float32)).to(dtype)


def _qdq(w: torch.Tensor) -> torch.Tensor:
    """quantize -> dequantize without packing (faster; same values), in ``w.dtype``."""
    codes, exp = mxfp4_codes(w)
    cdt = w.dtype if w.dtype in (torch.float32, torch.bfloat16) else torch.float32
    vals = _CODE_TO_FLOAT.to(device=w.device, dtype=cdt).index_select(0, codes.reshape(-1).to(torch.int32))
    k = w.shape[-1]
    vals = vals.reshape(*w.shape[:-1], k // BLOCK, BLOCK) * _exp2(exp, cdt).unsqueeze(-1)
    return vals.reshape(w.shape).to(w.dtype)


class _FakeQuantMXFP4(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):  # noqa: D401
        return _qdq(w)

    @staticmethod
    def backward(ctx, grad):
        return grad          # straight-through estimator: d fq(w) / dw := I


def fake_quant_mxfp4(w: torch.Tensor) -> torch.Tensor:
    """MXFP4 quantize->dequantize in the forward (same dtype as ``w``), identity gradient in the backward."""
    return _FakeQuantMXFP4.apply(w)


# ----------------------------------------------------------------------------------------------------------------
# Target selection
# ----------------------------------------------------------------------------------------------------------------
_PARAM_RE = re.compile(r"\.?parametrizations\.([^.]+)\.original$")


def _clean_name(name: str) -> str:
    """``a.parametrizations.w.original`` -> ``a.w`` (names as if no parametrization were registered)."""
    return _PARAM_RE.sub(lambda m: ("." if m.group(0).startswith(".") else "") + m.group(1), name)


clean_param_name = _clean_name


def _clean_named_parameters(model: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
    for name, p in model.named_parameters():
        yield _clean_name(name), p


def target_patterns(names: Iterable[str]) -> tuple[str, ...]:
    """The MXFP4 target patterns of a model with these parameter names (clean, or the engine's checkpoint format):
    MoE expert weights if the model has any (fused 3-D or per-expert Linear), else the dense MLP projections. The one
    rule of the learner's QAT (:func:`enable_qat`), the engine's packing (``rollout.vllm_engine.engine_fp4_patterns``),
    the export and MXFP4 teachers."""
    names = list(names)
    if any(re.search(p, n) for p in MOE_EXPERT_PATTERNS for n in names):
        return MOE_EXPERT_PATTERNS
    return DENSE_MLP_PATTERNS


def default_patterns(model: nn.Module) -> tuple[str, ...]:
    """:func:`target_patterns` of the model's clean parameter names."""
    return target_patterns(n for n, _ in _clean_named_parameters(model))


def select_target_names(shapes: dict[str, tuple[int, ...]], patterns: Iterable[str] | None = None) -> list[str]:
    """:func:`select_targets` on ``{clean name: shape}`` (no model needed: a checkpoint's header will do)."""
    pats = tuple(target_patterns(shapes) if patterns is None else patterns)
    compiled = [re.compile(p) for p in pats]
    out = []
    for name, shape in shapes.items():
        if any(c.search(name) for c in compiled):
            if len(shape) < 2 or shape[-1] % BLOCK != 0:
                raise ValueError(f"target {name} of shape {tuple(shape)} cannot be MXFP4 "
                                 f"(needs ndim >= 2 and last dim % {BLOCK} == 0)")
            out.append(name)
    return out


def select_targets(model: nn.Module, patterns: Iterable[str] | None = None) -> list[str]:
    """Clean parameter names (``re.search`` against any pattern) of the weights to put in MXFP4.

    Targets must be >= 2-D with the last dim divisible by 32; a matching parameter that is not raises ValueError.
    """
    return select_target_names({n: tuple(p.shape) for n, p in _clean_named_parameters(model)}, patterns)


# ----------------------------------------------------------------------------------------------------------------
# Quantization-aware training
# ----------------------------------------------------------------------------------------------------------------
class MXFP4FakeQuant(nn.Module):
    """Parametrization: the module attribute reads ``fake_quant_mxfp4(original)``."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant_mxfp4(w)


def _split(name: str) -> tuple[str, str]:
    mod, _, attr = name.rpartition(".")
    return mod, attr


def enable_qat(model: nn.Module, patterns: Iterable[str] | None = None) -> list[str]:
    """Make the model's forward use fake-quantized MXFP4 target weights; returns the target names.

    The master weights stay the same ``nn.Parameter`` objects (now at ``<module>.parametrizations.<attr>.original``),
    so an optimizer built before or after this call keeps updating them. Works for ``nn.Linear.weight`` and for raw
    parameters of fused expert modules. Idempotent for targets already parametrized.
    """
    targets = select_targets(model, patterns)
    for name in targets:
        mod_name, attr = _split(name)
        mod = model.get_submodule(mod_name)
        if parametrize.is_parametrized(mod, attr):
            if any(isinstance(p, MXFP4FakeQuant) for p in mod.parametrizations[attr]):
                continue
        parametrize.register_parametrization(mod, attr, MXFP4FakeQuant())
    return targets


def qat_targets(model: nn.Module) -> list[str]:
    """Clean names of the parameters currently under MXFP4 fake-quant."""
    out = []
    for mod_name, mod in model.named_modules():
        if parametrize.is_parametrized(mod):
            for attr, plist in mod.parametrizations.items():
                if any(isinstance(p, MXFP4FakeQuant) for p in plist):
                    out.append(f"{mod_name}.{attr}" if mod_name else attr)
    return out


def is_qat_enabled(model: nn.Module) -> bool:
    return bool(qat_targets(model))


def disable_qat(model: nn.Module) -> list[str]:
    """Remove the fake-quant parametrizations; the master parameters go back under their original names (same
    ``nn.Parameter`` objects). Returns the names that were un-parametrized."""
    names = qat_targets(model)
    for name in names:
        mod_name, attr = _split(name)
        mod = model.get_submodule(mod_name)
        # torch.nn.utils.parametrize keeps the property on a per-module class ``Parametrized<Cls>`` that a deepcopy
        # shares with the original; removing it would delete the property from both modules. Give this module its
        # own copy of that class first.
        cls = type(mod)
        mod.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        parametrize.remove_parametrizations(mod, attr, leave_parametrized=False)
    return names


def master_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with clean names (full-precision master weights), whether or not QAT is on."""
    return {_clean_name(k): v for k, v in model.state_dict().items()}


@torch.no_grad()
def quantized_state_dict(model: nn.Module, patterns: Iterable[str] | None = None,
                         targets_only: bool = False) -> dict[str, torch.Tensor]:
    """Clean-named state dict where target weights are MXFP4-dequantized (what an FP4 engine computes with).

    Targets: ``patterns`` if given, else the QAT targets if QAT is on, else :func:`default_patterns`. The dequantized
    tensors keep each parameter's dtype. With ``targets_only`` only the target tensors are returned.
    """
    if patterns is None and is_qat_enabled(model):
        targets = set(qat_targets(model))
    else:
        targets = set(select_targets(model, patterns))
    sd = master_state_dict(model)
    out = {}
    for k, v in sd.items():
        if k in targets:
            out[k] = _qdq(v)
        elif not targets_only:
            out[k] = v
    return out
