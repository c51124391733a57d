"""The learner's MXFP4 QAT and the engine's MXFP4 packing cover the same weights (issue 24), or validate refuses.

Before: the engine packed with the routed experts' patterns whatever the model, so for a dense model trained with
``qat: mxfp4`` on its MLP projections (recipes/smollm2.yaml, recipes/gpu/think_max_qwen3_8b.yaml) a GPU weight push
packed nothing while the learner fake-quantized every MLP weight (``test_dense_*`` fail there: engine side empty).
"""
import json

import pytest
import torch
from safetensors.torch import save_file

from pipeline.preflight_model import check_fp4
from pipeline.recipe import RecipeError, load_with_graph
from rollout.fp4 import DENSE_MLP_PATTERNS, MOE_EXPERT_PATTERNS
from rollout.vllm_engine import engine_fp4_patterns, fp4_coverage

H, I, V = 64, 128, 400
DENSE_MLP = [f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(2) for p in ("down", "gate", "up")]


def _dense(mlp_in=I, names=("gate_proj", "up_proj", "down_proj")) -> dict:
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    for i in range(2):
        p = f"model.layers.{i}"
        shapes.update({f"{p}.self_attn.{q}.weight": (H, H) for q in ("q_proj", "k_proj", "v_proj", "o_proj")})
        shapes.update({f"{p}.input_layernorm.weight": (H,), f"{p}.post_attention_layernorm.weight": (H,)})
        for n in names:
            shapes[f"{p}.mlp.{n}.weight"] = (H, mlp_in) if n in ("down_proj", "c_proj") else (I, H)
    return shapes


def _folder(tmp_path, shapes: dict, layers=2):
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    save_file({n: torch.zeros(s) for n, s in shapes.items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "qwen3", "vocab_size": V, "hidden_size": H,
                                               "num_hidden_layers": layers, "intermediate_size": I}))
    return d


def test_dense_engine_packs_what_qat_trains():
    learner, engine = fp4_coverage(_dense())
    assert learner == engine == sorted(DENSE_MLP)
    assert engine_fp4_patterns(_dense()) == DENSE_MLP_PATTERNS


def test_moe_engine_packs_the_experts_qat_trains(tiny_dir):
    from safetensors import safe_open

    with safe_open(f"{tiny_dir}/model.safetensors", "pt") as f:
        shapes = {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}
    learner, engine = fp4_coverage(shapes)    # fused [E, 2I, H] experts: the engine splits them per expert
    assert learner == engine and learner and all(".mlp.experts." in n for n in learner)
    assert engine_fp4_patterns(n for n in shapes) == MOE_EXPERT_PATTERNS


def _recipe(folder):
    recipe, graph = load_with_graph("recipes/think_max.yaml", [f"model.path={folder}"], check=False)
    assert recipe.learner.qat == "mxfp4" and recipe.fleet.fp4
    return recipe, graph


def test_validate_accepts_a_dense_model(tmp_path):
    notes = check_fp4(*_recipe(_folder(tmp_path, _dense())))
    assert notes == ["fp4: learner.qat and the fleet's MXFP4 packing cover the same 6 weights"]


def test_validate_refuses_when_the_engine_would_pack_other_weights(tmp_path, monkeypatch):
    import rollout.vllm_engine as ve

    monkeypatch.setattr(ve, "engine_fp4_patterns", lambda names, given=None: MOE_EXPERT_PATTERNS)   # the old rule
    with pytest.raises(RecipeError) as e:
        check_fp4(*_recipe(_folder(tmp_path, _dense())))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("learner.qat: mxfp4 fake-quantizes 6 weights")
    assert "(fleet.fp4) covers 0" in msg


def test_validate_refuses_a_model_without_targets(tmp_path):
    with pytest.raises(RecipeError, match=r"^learner.qat: mxfp4 finds no MXFP4 target in .*without fake-quant$"):
        check_fp4(*_recipe(_folder(tmp_path, _dense(names=("c_fc", "c_proj")))))


def test_validate_refuses_a_target_mxfp4_cannot_hold(tmp_path):
    with pytest.raises(RecipeError, match=r"^learner.qat: mxfp4: target model.layers.0.mlp.down_proj.weight of "
                                          r"shape \(64, 48\) cannot be MXFP4"):
        check_fp4(*_recipe(_folder(tmp_path, _dense(mlp_in=48))))


def test_no_check_without_qat_or_fp4(tmp_path):
    folder = _folder(tmp_path, _dense(names=("c_fc", "c_proj")))
    recipe, graph = load_with_graph("recipes/think_max.yaml", [f"model.path={folder}", "fleet.fp4=false",
                                                               "grpo.engine.fp4=false"], check=False)
    assert check_fp4(recipe, graph) == []
