"""The ``base`` stage: union SFT from bootstrap that the SFT specialists and the generalist fine-tune (the embedded
model's stand-in for pretraining). Config, graph wiring, and a short run showing that both start from its weights."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_cli, tiny_recipe
from pipeline.graph import build_graph
from pipeline.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]
MODES = ("non_think", "think_high", "think_max")


def _recipe(tmp_path, **over) -> Path:
    return tiny_recipe(tmp_path, domains=["math"], tasks={"math": {"n_train": 40, "n_eval": 2}}, **over)


def test_base_needs_steps_and_rejects_what_it_does_not_read(tmp_path):
    with pytest.raises(RecipeError, match=r"missing required key 'base.steps'"):
        load_recipe(_recipe(tmp_path, base={}))
    with pytest.raises(RecipeError, match=r"base.epochs"):
        load_recipe(_recipe(tmp_path, base={"steps": 2, "epochs": 1}))
    with pytest.raises(RecipeError, match=r"base.repeats.*math: must be >= 0"):
        load_recipe(_recipe(tmp_path, base={"steps": 2, "repeats": {"math": -1}}))
    with pytest.raises(RecipeError, match=r"base.repeats.*chess"):
        load_recipe(_recipe(tmp_path, base={"steps": 2, "repeats": {"chess": 1}}))
    with pytest.raises(RecipeError, match=r"sft.init_from.*'base'"):      # a specialist naming an absent base
        load_recipe(_recipe(tmp_path, sft__init_from="base"))


def test_base_reads_the_sft_section_defaults_and_uniform_repeats(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, base={"steps": 3}, sft__init_from="base",
                                 sft__learner={"lr": 0.5}, generalist={"init_from": "base"}))
    specs = {s.id: s for s in build_graph(recipe)}
    b = specs["base"]
    assert b.deps == ["bootstrap"] and b.kind == "base"
    assert b.config.steps == 3 and b.config.repeats == {"math": 1}
    assert (b.config.batch_size, b.config.max_len) == (recipe.sft.batch_size, recipe.sft.max_len)
    assert b.config.learner.lr == 0.5                                  # sft's learner overrides
    assert set(b.cells) == {("math", m) for m in MODES}                # evaluated like every model
    assert specs["sft.math"].deps == ["base"] and specs["generalist"].deps == ["base"]


def test_the_embedded_default_builds_its_specialists_and_start_on_one_base():
    specs = {s.id: s for s in build_graph(load_recipe(ROOT / "recipes" / "think_max.yaml"))}
    assert specs["base"].deps == ["bootstrap"]
    assert all(specs[f"sft.{d}"].deps == ["base"] for d in ("math", "code", "agent", "instruct"))
    assert specs["generalist"].deps == ["base"]
    assert specs["distill"].config.student_from == "generalist"
    # the generalist's budget is the specialists' SFT steps together; the base is shared, so counted in neither
    assert specs["generalist"].config.steps == sum(specs[f"sft.{d}"].config.sft.steps
                                                   for d in ("math", "code", "agent", "instruct"))


@pytest.mark.slow
def test_specialist_and_generalist_start_from_the_base_weights(tmp_path):
    """bootstrap -> base (4 steps) -> sft.math and generalist with a learning rate too small to move a weight: both
    finals equal the base's weights, not bootstrap's."""
    from safetensors.torch import load_file

    frozen = {"optimizer": "adamw", "lr": 1e-12, "warmup_steps": 0, "schedule": "constant"}
    recipe = _recipe(tmp_path, base={"steps": 4, "save_every": 2}, sft__init_from="base", sft__steps=1,
                     sft__learner=frozen, generalist={"init_from": "base", "steps": 1, "learner": frozen},
                     eval={"samples": 1, "pass_k": [1], "greedy": False, "max_tokens": {m: 8 for m in MODES},
                           "engine": {"kind": "hf"}})
    cfg = yaml.safe_load(recipe.read_text())
    cfg["base"]["learner"] = {"optimizer": "adamw", "lr": 1e-2, "warmup_steps": 0, "schedule": "constant"}
    recipe.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    r = run_cli("run", recipe, "--run-dir", run, "--only", "sft.math", "generalist", timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    boot = load_file(str(run / "bootstrap" / "final" / "model.safetensors"))
    base = load_file(str(run / "base" / "final" / "model.safetensors"))
    assert any(not torch.equal(boot[k], base[k]) for k in boot)       # the base trained
    for stage in ("sft.math", "generalist"):
        final = load_file(str(run / stage / "final" / "model.safetensors"))
        assert all(torch.allclose(final[k], base[k], atol=1e-6) for k in base), stage
        assert any(not torch.allclose(final[k], boot[k], atol=1e-6) for k in boot), stage
    manifest = json.loads((run / "base" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["deps"] == ["bootstrap"]
    assert [json.loads(x)["step"] for x in (run / "base" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert {f"reward_mean.math.{m}" for m in MODES} <= set(manifest["metrics"])
