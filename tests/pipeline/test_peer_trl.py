"""bench/peer_trl.py gives our stages and TRL's trainers the same settings (pure functions; nothing is timed)."""
import importlib.util

import pytest
import yaml

from conftest import ROOT
from pipeline.recipe import load_recipe

spec = importlib.util.spec_from_file_location("peer_trl", ROOT / "bench" / "peer_trl.py")
peer_trl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peer_trl)


def _sides(**kw):
    s = peer_trl.settings(**kw)
    recipe = peer_trl.our_recipe(yaml.safe_load(peer_trl.BASE_RECIPE.read_text()), s)
    return s, recipe, peer_trl.trl_grpo_args(s, "g"), peer_trl.trl_distill_args(s, "d")


@pytest.mark.parametrize("kw", [{}, dict(steps=3, prompts=2, group=8, max_new=32, top_k=0, top_p=1.0)])
def test_both_sides_get_identical_settings(kw):
    s, recipe, g, d = _sides(**kw)
    view = peer_trl.common_view(recipe, g, d)
    for name, values in view.items():
        assert len(set(map(str, values))) == 1, (name, values)
    assert view["steps"][0] == s["steps"] and view["max_new_tokens"][0] == s["max_new"]
    assert view["group_size"][0] == s["group"] and view["top_k"][0] == s["top_k"]
    assert view["transformers_generation"] == (True, True, True)


def test_the_derived_recipe_validates(tmp_path):
    _, recipe, _, _ = _sides()
    f = tmp_path / "peer_trl.yaml"
    f.write_text(yaml.safe_dump(recipe, sort_keys=False))
    rc = load_recipe(f)
    assert rc.domains == ["math"] and rc.modes == ["non_think"]
    assert rc.task_source("math").source == "reasoning_gym"


def test_trl_accepts_the_configs(tmp_path):
    trl = pytest.importorskip("trl")
    _, _, g, d = _sides()
    gc = trl.GRPOConfig(**{**g, "output_dir": str(tmp_path / "g")})
    dc = trl.DistillationConfig(**{**d, "output_dir": str(tmp_path / "d")})
    assert gc.generation_batch_size == g["per_device_train_batch_size"] and gc.steps_per_generation == 1
    assert gc.scale_rewards == "none" and dc.beta == 1.0 and not gc.use_vllm and not dc.use_vllm
