"""The one evaluation path on a tiny model: pass@k, bootstrap intervals, the rows of a cell (with their spec), cells
computed on their own (so a stage's rows are reusable), the eval stage's reuse, and `pipeline eval CHECKPOINT`."""
import json
import math
from pathlib import Path

import pytest
import yaml

from pipeline.evaluation import eval_command
from pipeline.graph import build_graph
from pipeline.recipe import Recipe
from train.config import EvalTarget, held_out
from train.eval_stage import evaluate_targets, results_markdown, reusable_rows
from train.evaluate import HeldOutEvaluator, bootstrap_ci, pass_at_k

ROW_KEYS = {"model", "domain", "mode", "metric", "value", "n", "spec"}


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_prompts():
    lo, hi = bootstrap_ci([0, 1] * 16, 2000, seed=1)
    assert lo < 0.5 < hi and 0.3 < lo and hi < 0.7
    lo2, hi2 = bootstrap_ci([0, 1] * 256, 2000, seed=1)
    assert hi2 - lo2 < (hi - lo) / 2
    assert bootstrap_ci([1.0] * 8, 500, seed=0) == (1.0, 1.0)
    assert bootstrap_ci([0.25, 0.75] * 8, 500, seed=3) == bootstrap_ci([0.25, 0.75] * 8, 500, seed=3)


def test_cells_per_model_kind():
    recipe = Recipe(name="t", domains=["math", "code"], modes=["non_think", "think_max"],
                    grpo={"steps": 1}, generalist={"steps": 1}, distill={"steps": 1}, eval={})
    cells = {s.id: s.cells for s in build_graph(recipe, check=False)}
    both = [(d, m) for d in ("math", "code") for m in ("non_think", "think_max")]
    assert cells["bootstrap"] == both and cells["generalist"] == both and cells["distill"] == both
    assert cells["sft.code"] == [("code", "non_think"), ("code", "think_max")]
    assert cells["grpo.math.think_max"] == [("math", "think_max")]
    assert cells["eval"] == []


def _recipe(**eval_over):
    return Recipe(name="t", domains=["math", "code"], tasks={"math": {"n_eval": 2}, "code": {"n_eval": 2}},
                  eval={"samples": 2, "pass_k": [1, 2], "max_tokens": {"non_think": 4, "think_max": 4},
                        "humaneval": True, "ci_resamples": 200, **eval_over})


def test_cell_rows_carry_intervals_and_spec(tiny_dir):
    h = held_out(_recipe())
    ev = HeldOutEvaluator(h, workers=1, humaneval_limit=2)
    rows = ev("m", Path(tiny_dir), [("math", "non_think"), ("code", "think_max")], log=lambda *_: None)
    got = {(r["domain"], r["mode"], r["metric"]): r for r in rows}
    for cell in (("math", "non_think"), ("code", "think_max")):
        for metric in ("reward_mean_greedy", "accuracy_greedy", "length_mean_greedy", "reward_mean", "accuracy",
                       "length_mean", "pass@1", "pass@2"):
            r = got[(*cell, metric)]
            assert ROW_KEYS <= set(r) and isinstance(r["value"], float) and r["model"] == "m"
            assert r["spec"] == h.cell_key(*cell)
        for metric in ("reward_mean", "accuracy", "reward_mean_greedy"):
            r = got[(*cell, metric)]
            assert r["ci_low"] <= r["value"] <= r["ci_high"]
        assert got[(*cell, "reward_mean_greedy")]["n"] == 2 and got[(*cell, "reward_mean")]["n"] == 4
        assert 0 < got[(*cell, "length_mean")]["value"] <= 4
    he = got[("code", "think_max", "humaneval_pass@1")]
    assert he["n"] == 2 and 0 <= he["value"] <= 1
    assert ("math", "non_think", "humaneval_pass@1") not in got
    md = results_markdown(rows)
    assert md.startswith("| model | domain | mode | n | reward_mean | accuracy | length_mean |")
    assert md.count("\n") == 4 and " [" in md


def test_a_cell_does_not_depend_on_what_else_was_evaluated(tiny_dir):
    """The property that makes a stage's own rows reusable by the eval stage."""
    h = held_out(_recipe(humaneval=False, greedy=False))
    alone = HeldOutEvaluator(h)("m", Path(tiny_dir), [("code", "think_max")], log=lambda *_: None)
    both = HeldOutEvaluator(h)("m", Path(tiny_dir), [("math", "non_think"), ("code", "think_max")],
                               log=lambda *_: None)
    assert alone == [r for r in both if r["domain"] == "code"]


def test_eval_stage_reuses_rows_with_the_same_spec_only(tiny_dir, tmp_path):
    h = held_out(_recipe(humaneval=False, greedy=False))
    cells = [("math", "non_think"), ("code", "think_max")]
    rows = HeldOutEvaluator(h)("sft.x", Path(tiny_dir), cells[:1], log=lambda *_: None)
    manifest = {"status": "complete", "eval_rows": rows}
    got, missing = reusable_rows(manifest, h, cells)
    assert got == rows and missing == [("code", "think_max")]
    other = held_out(_recipe(humaneval=False, greedy=False, samples=3, pass_k=[1]))
    assert reusable_rows(manifest, other, cells) == ([], cells)           # another spec: nothing reused
    assert reusable_rows({**manifest, "status": "failed"}, h, cells) == ([], cells)

    run = tmp_path / "run"
    (run / "sft.x").mkdir(parents=True)
    (run / "sft.x" / "final").symlink_to(Path(tiny_dir).resolve())
    (run / "sft.x" / "manifest.json").write_text(json.dumps(manifest))
    calls = []

    class Spy(HeldOutEvaluator):
        def __call__(self, model_id, folder, cells, log=print):
            calls.append(list(cells))
            return super().__call__(model_id, folder, cells, log=log)

    out = evaluate_targets(h, run, [EvalTarget(id="sft.x", cells=cells)], 1, log=lambda *_: None, evaluator=Spy(h))
    assert calls == [[("code", "think_max")]]                          # only the missing cell was generated
    assert [r for r in out if r["domain"] == "math"] == rows


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
