"""Every recipe validates; every kind of bad recipe exits 2 with one line naming the problem, never a traceback."""
import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli, tiny_recipe
from pipeline.recipe import RecipeError, load_recipe

RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_every_recipe_validates(path):
    from pipeline.recipe import load_with_graph

    # a GPU recipe is checked against a GPU node (validating it on this CPU machine says "needs 0.5 GPU")
    cluster = {"CPU": 16.0, "GPU": 1.0} if path.name == "smoke.yaml" else None
    recipe, graph = load_with_graph(path, cluster=cluster)
    assert recipe.name and graph


def test_validate_cli_ok():
    r = run_cli("validate", "recipes/think_max.yaml", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def _bad(tmp_path, mutate) -> tuple[int, str]:
    f = tiny_recipe(tmp_path)
    data = yaml.safe_load(f.read_text())
    text = mutate(data)
    f.write_text(text if isinstance(text, str) else yaml.safe_dump(data))
    r = run_cli("validate", f, timeout=120)
    return r.returncode, r.stdout + r.stderr


def _assert_one_line(rc, out, *needles):
    assert rc == 2, out
    assert "Traceback" not in out
    assert len(out.strip().splitlines()) == 1, out
    for n in needles:
        assert n in out, out


def test_unknown_key(tmp_path):
    rc, out = _bad(tmp_path, lambda d: d["sft"].update(stpes=3))
    _assert_one_line(rc, out, "sft.stpes", "unknown key")


def test_unknown_top_level_key(tmp_path):
    rc, out = _bad(tmp_path, lambda d: d.update(no_such_key_xyz=1))
    _assert_one_line(rc, out, "no_such_key_xyz")


def test_wrong_type(tmp_path):
    rc, out = _bad(tmp_path, lambda d: d["sft"].update(steps="many"))
    _assert_one_line(rc, out, "sft.steps", "integer")


def test_missing_model_path(tmp_path):
    rc, out = _bad(tmp_path, lambda d: d["model"].update(path=str(tmp_path / "nope")))
    _assert_one_line(rc, out, "model.path", "nope")


def test_missing_data_file(tmp_path):
    rc, out = _bad(tmp_path, lambda d: d["tasks"]["math"].update(source="json", data_files="/no/such.jsonl"))
    _assert_one_line(rc, out, "tasks.math.data_files")


def test_unknown_stage_reference(tmp_path):
    rc, out = _bad(tmp_path, lambda d: d["sft"].update(init_from="grpo.nothing"))
    _assert_one_line(rc, out, "sft.init_from", "grpo.nothing")


def test_vocabulary_mismatch(tmp_path):
    model_dir, tok_dir = tmp_path / "model", tmp_path / "tok"
    model_dir.mkdir(), tok_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "qwen3", "vocab_size": 100}))
    vocab = {f"t{i}": i for i in range(150)}
    (tok_dir / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel", "vocab": vocab},
                                                        "added_tokens": []}))
    rc, out = _bad(tmp_path, lambda d: d["model"].update(path=str(model_dir), tokenizer=str(tok_dir)))
    _assert_one_line(rc, out, "vocabulary mismatch", "150", "100")


def test_unsatisfiable_resources(tmp_path):
    rc, out = _bad(tmp_path, lambda d: d["sft"].update(resources={"num_gpus": 4}))
    _assert_one_line(rc, out, "GPU", "sft")


def test_invalid_yaml(tmp_path):
    rc, out = _bad(tmp_path, lambda d: "this: [is not\n")
    _assert_one_line(rc, out, "invalid YAML")


def test_missing_recipe_file(tmp_path):
    r = run_cli("validate", tmp_path / "missing.yaml", timeout=120)
    _assert_one_line(r.returncode, r.stdout + r.stderr, "missing.yaml")


def test_set_overrides(recipe_file):
    r = load_recipe(recipe_file, ["sft.steps=11", "learner.optimizer=adamw", "sft.per_domain.math.steps=5"])
    assert r.sft.steps == 11 and r.learner.optimizer == "adamw"
    assert r.sft.for_domain("math").steps == 5 and r.sft.for_domain("code").steps == 11
    with pytest.raises(RecipeError, match="per_domain.math.nonsense: unknown key"):
        load_recipe(recipe_file, ["sft.per_domain.math.nonsense=1"])


def test_bad_set_is_one_line(recipe_file):
    r = run_cli("validate", recipe_file, "--set", "sft.steps=abc", timeout=120)
    _assert_one_line(r.returncode, r.stdout + r.stderr, "sft.steps")
