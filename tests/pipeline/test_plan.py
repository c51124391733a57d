"""`pipeline plan`: placement and memory of every actor; exit 2 with one line when the cluster cannot hold it."""
import json
from pathlib import Path

import pytest

from conftest import ROOT, run_cli, tiny_recipe
from pipeline.plan import build_plan, dims_from_config, learner_parts, parse_cluster
from pipeline.recipe import LearnerConfig, RecipeError, load_recipe

SMOKE = ROOT / "recipes" / "gpu" / "smoke.yaml"
GPU_RECIPES = sorted(p for p in (ROOT / "recipes" / "gpu").glob("*.yaml") if p != SMOKE)   # the multi-GPU ones
ONE_H200 = "nodes=1,gpus=1,gpu_mem_gb=141,cpus=16,ram_gb=128"
TWO_H200_NODES = "nodes=2,gpus=8,gpu_mem_gb=141,cpus=96,ram_gb=1024"


def test_cpu_recipe_plans_on_this_machine():
    r = run_cli("plan", "recipes/think_max.yaml", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "(this machine)" in r.stdout and "stage bootstrap" in r.stdout and "learner" in r.stdout
    assert r.stdout.strip().endswith("fits")


def test_gpu_smoke_recipe_runs_every_real_stage_on_one_gpu():
    """recipes/gpu/smoke.yaml: the fleet's engine and each stage share one GPU (fractional Ray GPUs); every kind of
    the real graph is there, sampling through the fleet in MXFP4."""
    recipe = load_recipe(SMOKE, check=False)
    dims, plans, problems = build_plan(recipe, parse_cluster(ONE_H200))
    assert problems == []
    kinds = {p.kind for p in plans}
    assert {"fleet", "bootstrap", "sft", "grpo", "generalist", "distill", "eval"} <= kinds
    fleet = next(p for p in plans if p.kind == "fleet")
    assert [a.gpus for a in fleet.actors] == [[0]] and 0 < fleet.gpus < 1
    for p in plans:
        if p.kind in ("sft", "grpo", "generalist", "distill"):
            assert 0 < p.gpus <= 1 - fleet.gpus and p.layout.gpus[0] == [0], p.id
            assert p.layout.bundles[0]["GPU"] == pytest.approx(p.gpus)   # the bundle asks the fraction, not 1
    assert recipe.fleet.fp4 and recipe.grpo.engine.kind == recipe.distill.engine.kind == "vllm"
    assert recipe.learner.precision == "bf16" and recipe.learner.qat == "mxfp4"


@pytest.mark.parametrize("path", GPU_RECIPES, ids=[p.name for p in GPU_RECIPES])
def test_gpu_recipes_fit_two_h200_nodes(path):
    recipe = load_recipe(path, check=False)
    dims, plans, problems = build_plan(recipe, parse_cluster(TWO_H200_NODES))
    assert problems == []
    by_id = {p.id: p for p in plans}
    grpo = next(p for p in plans if p.kind == "grpo")
    names = [a.name for a in grpo.actors]
    assert "learner" in names and "rewards" in names and not any(n.startswith("engine") for n in names)
    learner = grpo.actors[names.index("learner")]
    assert any("ZeRO-3" in n for n in learner.notes)
    assert len(learner.gpus) == len(grpo.layout.ranks) == grpo.gpus           # one rank per GPU, in its bundle
    fleet = by_id["fleet"]                                                     # the engines: the fleet's, per run
    tp = recipe.fleet.tensor_parallel_size
    assert len(fleet.actors) == recipe.fleet.engines and all(len(e.gpus) == tp for e in fleet.actors)
    assert fleet.node is not None
    distill = by_id["distill"]
    teachers = [a for a in distill.actors if a.name.startswith("teacher:")]
    assert len(teachers) >= 2
    learner_gpus = set(distill.actors[0].gpus)
    if recipe.distill.placement.strategy == "split":                          # teachers on their own GPUs
        assert not learner_gpus & {g for t in teachers for g in t.gpus}
    else:
        assert {g for t in teachers for g in t.gpus} <= learner_gpus
    assert all(p.node is not None or p.wave > 0 for p in plans if p.kind != "fleet")


def test_gpu_recipe_cli_and_too_small_cluster():
    path = "recipes/gpu/think_max_qwen3_8b.yaml"
    r = run_cli("plan", path, "--cluster", TWO_H200_NODES, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "vLLM TP=2 MXFP4 weights" in r.stdout and "placement split" in r.stdout and "placement group:" in r.stdout
    assert "as logits" in r.stdout and r.stdout.strip().endswith("fits")
    r = run_cli("plan", path, "--cluster", "nodes=1,gpus=8,gpu_mem_gb=24,cpus=96,ram_gb=512", timeout=120)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "does not fit" in err and "GB" in err


def test_without_cluster_a_joining_recipe_is_planned_but_not_checked():
    from pipeline.plan import main_plan

    path = ROOT / "recipes/gpu/think_max_qwen3_8b_colocate.yaml"
    lines = []
    rc, err = main_plan(load_recipe(path, check=False), str(path), None, echo=lines.append)
    assert rc == 0 and err is None and lines[-1] == "fit not checked (no --cluster)"


def test_stage_wider_than_a_node_and_bad_cluster_text(tmp_path):
    recipe = load_recipe(ROOT / "recipes/gpu/think_max_qwen3_8b.yaml", check=False)
    _, _, problems = build_plan(recipe, parse_cluster("nodes=4,gpus=4,gpu_mem_gb=141,cpus=96,ram_gb=1024"))
    assert problems and "cannot span nodes" in problems[0]
    with pytest.raises(RecipeError, match="gpu_mem_gb"):
        parse_cluster("gpus=8")
    with pytest.raises(RecipeError, match="--cluster: expected KEY=NUMBER"):
        parse_cluster("gpus=lots")


def test_hub_id_without_size_is_one_line(tmp_path):
    f = tiny_recipe(tmp_path, model={"path": "some-org/some-model"})
    r = run_cli("plan", f, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "model.size" in r.stderr


def test_parameter_count_matches_a_real_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    cfg = json.loads((Path(tiny_dir) / "config.json").read_text())
    d = dims_from_config(cfg, "tiny")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    n = sum(p.numel() for p in model.parameters())
    assert abs(d.params - n) / n < 0.01, (d.params, n)
    assert d.active < d.params and 0 < d.fp4_params < d.params


def test_zero_sharding_arithmetic():
    from pipeline.plan import Dims

    d = Dims(params=8e9, active=8e9, hidden=4096, layers=36, vocab=151936, kv_bytes_per_token=147456,
             fp4_params=5e9, adam_params=1.3e9, max_context=None, source="test")
    z0, _, _ = learner_parts(d, LearnerConfig(optimizer="adamw", precision="bf16"), 8, 1, 1, True)
    z3, _, _ = learner_parts(d, LearnerConfig(optimizer="adamw", precision="bf16", zero_stage=3), 8, 1, 1, True)
    z2, _, _ = learner_parts(d, LearnerConfig(optimizer="adamw", precision="bf16", zero_stage=2), 8, 1, 1, True)
    assert z0["weights"] == 8e9 * 4 and z0["optim"] == 8e9 * 8        # plain accelerate: fp32 weights, AdamW 2x fp32
    assert z3["weights"] == 8e9 * 2 / 8 and z3["grads"] == 8e9 * 2 / 8 and z3["optim"] == 8e9 * 12 / 8
    assert z2["weights"] == 8e9 * 2 and z2["grads"] == 8e9 * 2 / 8
    muon, _, _ = learner_parts(d, LearnerConfig(optimizer="muon"), 1, 1, 1, True)
    assert muon["optim"] == 4 * (8e9 - 1.3e9) + 8 * 1.3e9                  # Muon: one momentum; AdamW part: two
