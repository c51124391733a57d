"""MXFP4 format, fake-quant/QAT, target selection and compressed-tensors export (rollout/fp4.py, rollout/export.py)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from rollout.fp4 import (
    DENSE_MLP_PATTERNS,
    E2M1_VALUES,
    MOE_EXPERT_PATTERNS,
    default_patterns,
    dequantize_mxfp4,
    disable_qat,
    enable_qat,
    fake_quant_mxfp4,
    is_qat_enabled,
    master_state_dict,
    quantize_mxfp4,
    quantized_state_dict,
    select_targets,
)

transformers = pytest.importorskip("transformers")

GRID = torch.tensor(E2M1_VALUES)


def tiny_moe():
    torch.manual_seed(0)
    cfg = transformers.Qwen3MoeConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, moe_intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, num_experts=4, num_experts_per_tok=2,
        tie_word_embeddings=False)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def tiny_dense():
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=False)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def moe():
    return tiny_moe()


@pytest.fixture(scope="module")
def dense():
    return tiny_dense()


# ------------------------------------------------------------------------------------------------------------ format
def test_grid_round_trip_exact():
    """Values already on the MXFP4 grid (E2M1 x 2^k, block max 4 or 6 x 2^k) survive quantize/dequantize bitwise."""
    g = torch.Generator().manual_seed(1)
    rows, blocks = 16, 8
    mags = GRID[torch.randint(0, 8, (rows, blocks, 32), generator=g)]
    mags[..., 0] = torch.where(torch.rand(rows, blocks, generator=g) < 0.5, 4.0, 6.0)   # pin the block max
    signs = torch.where(torch.rand(rows, blocks, 32, generator=g) < 0.5, -1.0, 1.0)
    exps = torch.randint(-30, 30, (rows, blocks, 1), generator=g).float()
    w = torch.ldexp(mags * signs, exps).reshape(rows, blocks * 32)
    packed, scales = quantize_mxfp4(w)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, blocks * 16)
    assert scales.dtype == torch.uint8 and scales.shape == (rows, blocks)
    assert torch.equal(scales.int() - 127, exps.squeeze(-1).int())
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(dequantize_mxfp4(packed, scales, dtype), w.to(dtype))
    assert torch.equal(dequantize_mxfp4(*quantize_mxfp4(w.bfloat16()), torch.float32), w)


def test_known_block_hand_computed():
    # amax = 7 -> floor(log2 7) = 2 -> scale 2^(2-2) = 1 -> E8M0 127; ties go to the even code
    x = torch.tensor([1.0, -0.5, 3.1, 7.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.01] + [0.0] * 20)
    packed, scales = quantize_mxfp4(x)
    assert scales.tolist() == [127]
    # codes: 1->2, -0.5->9, 3.1->5(3), 7->7(6, clamped), .25->0, .75->2(1), 1.25->2(1), 1.75->4(2), 2.5->4(2),
    #        3.5->6(4), 5->6(4), -5.01->15(-6); low nibble = even element
    assert packed.tolist() == [0x92, 0x75, 0x20, 0x42, 0x64, 0xF6] + [0] * 10
    expect = [1.0, -0.5, 3.0, 6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -6.0] + [0.0] * 20
    assert dequantize_mxfp4(packed, scales, torch.float32).tolist() == expect
    # the same block scaled by 2^-9 keeps its codes and moves the exponent
    p2, s2 = quantize_mxfp4(x * 2.0**-9)
    assert torch.equal(p2, packed) and s2.tolist() == [127 - 9]
    # all-zero block: codes 0, decodes to 0
    pz, sz = quantize_mxfp4(torch.zeros(2, 32))
    assert pz.eq(0).all() and dequantize_mxfp4(pz, sz, torch.float32).eq(0).all()


def test_scale_is_power_of_two_with_ocp_exponent():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 256, generator=g) * torch.logspace(-6, 3, 64).unsqueeze(1)
    packed, scales = quantize_mxfp4(w)
    scale = torch.ldexp(torch.ones(()), scales.float() - 127)
    amax = w.reshape(64, 8, 32).abs().amax(-1)
    assert torch.equal(scale, 2.0 ** (torch.floor(torch.log2(amax)) - 2))       # OCP: 2^(floor(log2 amax) - emax)
    r = amax / scale
    assert ((r >= 4) & (r < 8)).all()
    deq = dequantize_mxfp4(packed, scales, torch.float32).reshape(64, 8, 32) / scale.unsqueeze(-1)
    assert torch.isin(deq.abs(), GRID).all()                                        # elements on the E2M1 grid
    # each element is a nearest grid point of w / scale (magnitudes above 6 clamp to 6)
    a = w.reshape(64, 8, 32) / scale.unsqueeze(-1)
    nearest = (a.abs().clamp(max=6).unsqueeze(-1) - GRID).abs().amin(-1)
    assert torch.equal((deq.abs() - a.abs().clamp(max=6)).abs(), nearest)
    assert torch.equal(torch.sign(deq[deq != 0]), torch.sign(a[deq != 0]))


def test_packing_order_and_decode_match_compressed_tensors():
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8, unpack_fp4_from_uint8

    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(3))
    packed, scales = quantize_mxfp4(w)
    scale = torch.ldexp(torch.ones(()), scales.float() - 127).repeat_interleave(32, -1)
    ours = dequantize_mxfp4(packed, scales, torch.float32)
    assert torch.equal(pack_fp4_to_uint8(ours / scale), packed)
    assert torch.equal(unpack_fp4_from_uint8(packed, 32, 128, torch.float32) * scale, ours)
    lo = quantize_mxfp4(torch.tensor([6.0, 0.5] + [0.0] * 30))[0][0]
    assert lo.item() == 0x17                                        # element 0 (6.0, code 7) in the low nibble


def test_3d_expert_tensors_block_along_input_dim():
    w = torch.randn(4, 64, 96, generator=torch.Generator().manual_seed(4))
    packed, scales = quantize_mxfp4(w)
    assert packed.shape == (4, 64, 48) and scales.shape == (4, 64, 3)
    for e in range(4):
        p, s = quantize_mxfp4(w[e])
        assert torch.equal(p, packed[e]) and torch.equal(s, scales[e])
    assert dequantize_mxfp4(packed, scales, torch.float32).shape == w.shape
    with pytest.raises(ValueError):
        quantize_mxfp4(torch.randn(4, 48))


def test_fake_quant_forward_and_straight_through_gradient():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(64, 128, generator=g, requires_grad=True)
    x = torch.randn(8, 128, generator=g)
    y = x @ fake_quant_mxfp4(w).T
    assert torch.equal(fake_quant_mxfp4(w).detach(), dequantize_mxfp4(*quantize_mxfp4(w.detach()), torch.float32))
    up = torch.randn_like(y)
    (y * up).sum().backward()
    wq = dequantize_mxfp4(*quantize_mxfp4(w.detach()), torch.float32).requires_grad_()
    (x @ wq.T * up).sum().backward()
    assert torch.equal(w.grad, wq.grad)                             # identity through the quantizer
    wb = torch.randn(4, 32, 64, dtype=torch.bfloat16, requires_grad=True)
    fake_quant_mxfp4(wb).sum().backward()
    assert fake_quant_mxfp4(wb).dtype == torch.bfloat16 and torch.equal(wb.grad, torch.ones_like(wb))


# ------------------------------------------------------------------------------------------------------- selection
def test_target_selection_moe(moe):
    assert default_patterns(moe) == MOE_EXPERT_PATTERNS
    t = select_targets(moe)
    assert t == [f"model.layers.{i}.mlp.experts.{p}" for i in range(2) for p in ("gate_up_proj", "down_proj")]
    assert select_targets(moe, [r"self_attn\.(q|k)_proj\.weight$"]) == [
        f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "qk"]
    with pytest.raises(ValueError):
        select_targets(moe, [r"norm\.weight$"])                     # 1-D: not quantizable


def test_target_selection_dense(dense):
    assert default_patterns(dense) == DENSE_MLP_PATTERNS
    assert select_targets(dense) == [
        f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(2) for p in ("gate", "up", "down")]


# ------------------------------------------------------------------------------------------------------------- QAT
@pytest.mark.parametrize("build", [tiny_moe, tiny_dense], ids=["moe", "dense"])
def test_qat_forward_equals_fp4_weights_and_trains_master(build):
    model = build()
    names_before = list(model.state_dict())
    params_before = dict(model.named_parameters())
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(6))
    targets = enable_qat(model)
    assert is_qat_enabled(model) and targets == select_targets(model)
    assert list(master_state_dict(model)) == names_before
    with torch.no_grad():
        qat_logits = model(ids).logits
        ref = copy.deepcopy(params_to_plain(model))
        ref.load_state_dict(quantized_state_dict(model))
        assert torch.equal(ref(ids).logits, qat_logits)
        disable_qat(ref)
        ref_master = copy.deepcopy(ref)
        ref_master.load_state_dict(master_state_dict(model))
        assert not torch.equal(ref_master(ids).logits, qat_logits)   # FP4 is visibly different from the master
    # the optimizer updates the full-precision master: same Parameter objects as before enable_qat
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    t0 = targets[0]
    master = params_before[t0]
    before = master.detach().clone()
    model(ids, labels=ids).loss.backward()
    assert master.grad is not None and master.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(master, before)
    assert not torch.isin(master.detach().flatten()[:64], quantized_state_dict(model)[t0].flatten()[:64]).all()
    disable_qat(model)
    assert not is_qat_enabled(model) and dict(model.named_parameters())[t0] is master
    assert list(model.state_dict()) == names_before


def params_to_plain(model):
    """A copy of ``model`` without parametrizations (clean names) for reference forwards."""
    m = copy.deepcopy(model)
    disable_qat(m)
    return m


# ---------------------------------------------------------------------------------------------------------- export
def test_export_moe_decompresses_bitwise_with_compressed_tensors(moe, tmp_path):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    from rollout.export import export_mxfp4_checkpoint

    model = copy.deepcopy(moe)
    enable_qat(model)                                   # export must see through QAT and leave it on
    info = export_mxfp4_checkpoint(model, None, tmp_path)
    assert is_qat_enabled(model)
    cfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == "mxfp4-pack-quantized"
    qcfg = QuantizationConfig.model_validate(cfg)
    scheme = qcfg.config_groups["group_0"]
    assert scheme.weights.num_bits == 4 and scheme.weights.group_size == 32 and scheme.input_activations is None
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    assert compressor.__name__ == "MXFP4PackedCompressor"

    tensors = load_file(tmp_path / "model.safetensors")
    fp4 = quantized_state_dict(model)
    inter = moe.config.moe_intermediate_size
    assert len(info["quantized_modules"]) == 2 * 4 * 3
    for mod in info["quantized_modules"]:
        packed, scale = tensors[f"{mod}.weight_packed"], tensors[f"{mod}.weight_scale"]
        assert f"{mod}.weight" not in tensors and packed.dtype == scale.dtype == torch.uint8
        ct = compressor.decompress({"weight_packed": packed, "weight_scale": scale}, scheme)["weight"]
        assert ct.dtype == torch.bfloat16
        assert torch.equal(ct, dequantize_mxfp4(packed, scale, torch.bfloat16))
        # ... and equal to the slice of our fused FP4 expert tensor the checkpoint entry comes from
        prefix, e, proj = mod.rsplit(".", 2)
        e = int(e)
        if proj == "down_proj":
            ours = fp4[f"{prefix}.down_proj"][e]
        else:
            gu = fp4[f"{prefix}.gate_up_proj"][e]
            ours = gu[:inter] if proj == "gate_proj" else gu[inter:]
        assert torch.equal(ct, ours.bfloat16())
    # untouched tensors and the ignore list
    assert torch.equal(tensors["model.layers.0.self_attn.q_proj.weight"], fp4["model.layers.0.self_attn.q_proj.weight"])
    assert "model.layers.0.mlp.gate" in qcfg.ignore and "lm_head" in qcfg.ignore


def test_export_dense_loads_through_transformers_model_compressor(dense, tmp_path):
    from rollout.export import export_mxfp4_checkpoint

    export_mxfp4_checkpoint(dense, None, tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=transformers.CompressedTensorsConfig(dequantize=True))
    sd = loaded.state_dict()
    fp4 = quantized_state_dict(dense)
    for name in select_targets(dense):
        assert torch.equal(sd[name], fp4[name].bfloat16()), name


def test_export_moe_loads_fused_through_transformers_decompress_experts(moe, tmp_path):
    """transformers 5 re-fuses the per-expert MXFP4 tensors on load, decompressing each with compressed-tensors'
    MXFP4 compressor (``DecompressExperts``): the fused experts equal our FP4 weights bitwise."""
    from rollout.export import export_mxfp4_checkpoint

    export_mxfp4_checkpoint(moe, None, tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=transformers.CompressedTensorsConfig(dequantize=True))
    sd = loaded.state_dict()
    fp4 = quantized_state_dict(moe)
    for name in select_targets(moe):
        assert sd[name].shape == fp4[name].shape and torch.equal(sd[name], fp4[name].bfloat16()), name
