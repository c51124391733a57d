"""Eval stage pieces on a tiny model: pass@k, which cells each model gets, rows schema, HumanEval rows, and
`pipeline eval CHECKPOINT` writing results.json / results.md."""
import json
import math
from pathlib import Path

import pytest
import yaml

from pipeline.eval_stage import cells_for, eval_command, evaluate_model, pass_at_k, results_markdown
from pipeline.recipe import EvalConfig, Recipe

ROW_KEYS = {"model", "domain", "mode", "metric", "value", "n"}


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_cells_per_model_kind():
    doms, modes = ["math", "code"], ["non_think", "think_max"]
    assert cells_for("bootstrap", "bootstrap", None, None, doms, modes) == [(d, m) for d in doms for m in modes]
    assert cells_for("sft.code", "sft", "code", None, doms, modes) == [("code", "non_think"), ("code", "think_max")]
    assert cells_for("grpo.math.think_max", "grpo", "math", "think_max", doms, modes) == [("math", "think_max")]
    assert len(cells_for("distill", "distill", None, None, doms, modes)) == 4


def test_evaluate_model_rows(tiny_dir):
    recipe = Recipe(name="t", domains=["math", "code"], tasks={"math": {"n_eval": 2}, "code": {"n_eval": 2}})
    cfg = EvalConfig(samples=2, pass_k=[1, 2, 8], max_tokens={"non_think": 4, "think_max": 4}, humaneval=True)
    rows = evaluate_model("m", Path(tiny_dir), recipe, cfg, [("math", "non_think"), ("code", "think_max")],
                          workers=1, humaneval_limit=2, log=lambda *_: None)
    assert all(set(r) == ROW_KEYS for r in rows)
    got = {(r["domain"], r["mode"], r["metric"]): r for r in rows}
    for cell in (("math", "non_think"), ("code", "think_max")):
        for metric in ("reward_mean_greedy", "accuracy_greedy", "length_mean_greedy", "reward_mean", "accuracy",
                       "length_mean", "pass@1", "pass@2"):
            r = got[(*cell, metric)]
            assert isinstance(r["value"], float) and r["model"] == "m"
        assert (*cell, "pass@8") not in got                  # k > samples is skipped
        assert got[(*cell, "reward_mean_greedy")]["n"] == 2 and got[(*cell, "reward_mean")]["n"] == 4
        assert 0 <= got[(*cell, "accuracy")]["value"] <= 1
        assert 0 < got[(*cell, "length_mean")]["value"] <= 4
    he = got[("code", "think_max", "humaneval_pass@1")]
    assert he["n"] == 2 and 0 <= he["value"] <= 1
    assert ("math", "non_think", "humaneval_pass@1") not in got
    md = results_markdown(rows)
    assert md.startswith("| model | domain | mode | n | reward_mean | accuracy | length_mean |")
    assert md.count("\n") == 4


def test_eval_command_on_a_checkpoint(tiny_dir, tmp_path):
    rf = tmp_path / "r.yaml"
    rf.write_text(yaml.safe_dump({"name": "r", "domains": ["instruct"], "modes": ["think_high"],
                                  "tasks": {"instruct": {"n_eval": 2}},
                                  "eval": {"samples": 1, "pass_k": [1], "max_tokens": {"think_high": 4}}}))
    out = eval_command(tiny_dir, str(rf), str(tmp_path / "out"), workers=1)
    rows = json.loads((out / "results.json").read_text())
    assert {r["metric"] for r in rows} == {"reward_mean_greedy", "accuracy_greedy", "length_mean_greedy",
                                           "reward_mean", "accuracy", "length_mean", "pass@1"}
    assert {(r["model"], r["domain"], r["mode"]) for r in rows} == {(Path(tiny_dir).name, "instruct", "think_high")}
    assert "| reward_mean |" in (out / "results.md").read_text()
