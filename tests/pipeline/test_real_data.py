"""recipes/real_data.yaml: it validates, its stages are the ones it promises, and (slow) a shrunk run writes
HumanEval pass@1 and BFCL accuracy rows for every model the eval stage covers."""
import json

import pytest

from conftest import ROOT, run_cli
from pipeline.recipe import load_recipe

RECIPE = ROOT / "recipes" / "real_data.yaml"


def test_real_data_recipe_validates_with_its_sources_and_suites():
    r = run_cli("validate", RECIPE, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    recipe = load_recipe(RECIPE)
    assert recipe.model.path is None and recipe.domains == ["code", "agent"]
    assert recipe.task_source("code").data_files == "rewards/data/sft_code.jsonl"
    assert recipe.task_source("agent").source == "bfcl"
    assert recipe.eval.suites.names() == ["humaneval", "bfcl"] and recipe.distill is None
    stages = run_cli("stages", RECIPE, timeout=120).stdout
    for sid in ("bootstrap", "sft.code", "sft.agent", "grpo.code.non_think", "grpo.agent.non_think", "eval"):
        assert sid in stages, stages


def test_an_unknown_suite_on_the_command_line_is_one_line():
    r = run_cli("validate", RECIPE, "--set", "eval.suites=[humaneval, bfcl, mmlu]", timeout=120)
    assert r.returncode == 2
    lines = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    assert len(lines) == 1 and "eval.suites: unknown suite 'mmlu'" in lines[0], lines


SHRINK = ["sft.steps=2", "sft.per_domain.agent.steps=2", "sft.batch_size=4", "grpo.steps=1",
          "grpo.prompts_per_step=2", "grpo.group_size=2", "tasks.code.n_eval=2", "tasks.agent.n_eval=2",
          "eval.samples=2", "eval.pass_k=[1]", "eval.greedy=false", "eval.max_tokens.non_think=32",
          "grpo.shaping.modes.non_think.l_max=32", "grpo.shaping.modes.non_think.l_buffer=8",
          "eval.suites.humaneval.limit=2", "eval.suites.bfcl.limit=1", "model.tiny.tokenizer_corpus_per_domain=60"]


@pytest.mark.slow
def test_real_data_shrunk_writes_suite_rows_for_every_model(tmp_path):
    run = tmp_path / "run"
    args = [a for s in SHRINK for a in ("--set", s)]
    r = run_cli("run", RECIPE, "--run-dir", run, *args, timeout=1400)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rows = json.loads((run / "eval" / "results.json").read_text())
    models = {"sft.code", "grpo.code.non_think", "sft.agent", "grpo.agent.non_think"}
    assert {x["model"] for x in rows} == models                       # bootstrap excluded
    for m in models:
        domain = "code" if ".code" in m else "agent"
        got = {x["metric"]: x for x in rows if x["model"] == m}
        assert got["accuracy"]["domain"] == domain
        if domain == "code":
            he = got["humaneval_pass@1"]
            assert he["n"] == 2 and 0.0 <= he["value"] <= 1.0 and he["domain"] == "code"
            assert not any(k.startswith("bfcl") for k in got)
        else:
            assert got["bfcl_accuracy"]["n"] == 3 and 0.0 <= got["bfcl_accuracy"]["value"] <= 1.0
            assert {f"bfcl_accuracy.{c}" for c in ("simple_python", "multiple", "parallel")} <= set(got)
            assert "humaneval_pass@1" not in got
        for x in got.values():
            assert {"model", "domain", "mode", "metric", "value", "n", "spec"} <= set(x) and x["mode"] == "non_think"
    # the eval stage reused every stage's own rows (same spec): nothing generated again
    log = (run / "eval" / "log.txt").read_text()
    assert log.count("reused its own rows") == len(models), log
