"""The distill stage end to end on a tiny setup: teacher actors, a short run through the CLI, exact resumption."""
import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli, tiny_recipe

pytestmark = pytest.mark.slow

STEPS, WARMUP = 6, 2
MODES = ("non_think", "think_high", "think_max")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_teacher_actor_hidden_states_reproduce_logits(ray_local, tiny_dir):
    from transformers import AutoModelForCausalLM

    from distill.routing import Teacher
    from distill.teachers import TeacherPool, TeacherWorker

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    seqs = [list(range(3, 20)), list(range(30, 41))]
    pos = [[5, 6, 7, 15], [0, 9]]
    pool = TeacherPool({"A": Teacher("A", tiny_dir)}, budget_gb=4)
    try:
        out = pool.run({"A": (seqs, pos)})["A"]
        head = pool.heads["A"]
        assert torch.equal(head, model.get_output_embeddings().weight.detach())
        for s, p, h in zip(seqs, pos, out):
            assert h.dtype == torch.bfloat16 and h.shape == (len(p), model.config.hidden_size)
            with torch.no_grad():
                want = model(input_ids=torch.tensor([s])).logits[0, p]
            got = h.float() @ head.T                      # what the learner recomputes chunk by chunk
            assert torch.allclose(got, want, atol=0.05 * float(want.abs().max()))
            assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.75
        assert pool.loads == 1 and pool.resident_bytes() > 0
    finally:
        pool.close()
    # payload "logits" returns the full fp32 logits, exactly the direct forward's
    logits = TeacherWorker(tiny_dir).forward(seqs, pos, payload="logits")
    for s, p, lg in zip(seqs, pos, logits):
        with torch.no_grad():
            assert torch.allclose(lg, model(input_ids=torch.tensor([s])).logits[0, p], atol=1e-5)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """bootstrap -> sft.math (a few steps: the teacher), generalist (2 union-SFT steps: the student's start) ->
    distill (6 distillation steps with MXFP4 rollouts), through the CLI."""
    tmp = tmp_path_factory.mktemp("distill")
    recipe = tiny_recipe(tmp, name="opd", domains=["math"], tasks={"math": {"n_train": 40, "n_eval": 2}},
                         sft__steps=12, generalist={"steps": WARMUP, "save_every": 1},
                         eval={"samples": 2, "pass_k": [1], "max_tokens": {m: 8 for m in MODES}}, distill={
                             "steps": STEPS, "prompts_per_step": 4, "save_every": 2,
                             "chunk_size": 64, "engine": {"fp4": True},   # MXFP4 rollouts
                             "max_tokens": {"non_think": 16, "think_high": 16, "think_max": 16},
                             "learner": {"optimizer": "adamw", "lr": 1e-2, "warmup_steps": 0,
                                         "schedule": "constant"},
                             "resources": {"num_cpus": 1}})
    r = run_cli("run", recipe, "--run-dir", tmp / "run", timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return recipe, tmp / "run"


def test_short_run_reduces_kl_and_trains_the_student(distilled):
    from safetensors.torch import load_file

    _, run = distilled
    rows = [json.loads(x) for x in (run / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    warm = [json.loads(x) for x in (run / "generalist" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in warm] == list(range(1, WARMUP + 1))              # the student's start: own stage
    kl = [r["kl.sft.math"] for r in rows]
    assert all(r["loss"] == pytest.approx(r["kl.sft.math"]) for r in rows)    # one teacher, weight 1
    assert sum(kl[-2:]) / 2 < 0.7 * kl[0], kl
    for key in ("payload_bytes_per_token", "tokens_per_s", "peak_rss_mb", "sync_s", "teacher_rss_gb"):
        assert rows[-1][key] > 0
    assert rows[-1]["payload_bytes_per_token"] == 2 * 64                       # bf16 hidden states, H = 64
    start = load_file(str(run / "generalist" / "final" / "model.safetensors"))
    final = load_file(str(run / "distill" / "final" / "model.safetensors"))
    assert any(not torch.equal(start[k], final[k]) for k in start)
    assert not torch.equal(start["lm_head.weight"], final["lm_head.weight"])
    manifest = json.loads((run / "distill" / "manifest.json").read_text())
    assert manifest["student_from"] == "generalist"
    for mode in MODES:
        for k in ("reward_mean", "accuracy", "teacher_reward_mean"):
            assert f"{k}.math.{mode}" in manifest["metrics"]
    rows = {(r["metric"], r["mode"]) for r in manifest["eval_rows"]}
    assert {("reward_mean", m) for m in MODES} <= rows


class _Stop(Exception):
    pass


def test_resume_is_exact(distilled, ray_local, monkeypatch, tmp_path):
    """Stop right after the step-4 checkpoint (mid-distillation), run again: losses equal the uninterrupted run's."""
    from core.checkpoints import Checkpoints
    from core.context import StageContext
    from distill.stage import run
    from pipeline.graph import build_graph
    from pipeline.recipe import load_recipe

    recipe_file, run_dir = distilled
    recipe = load_recipe(recipe_file)
    spec = next(s for s in build_graph(recipe) if s.id == "distill")
    torch.set_num_threads(1)                 # as the runner does for a 1-CPU stage

    def ctx():
        return StageContext(stage_id="distill", kind="distill", dir=tmp_path / "distill", config=spec.config,
                            seed=recipe.seed, num_cpus=1, deps={s: run_dir / s / "final" for s in spec.deps})

    commit = Checkpoints.commit

    def commit_then_stop(self, tmp, step, **info):
        out = commit(self, tmp, step, **info)
        if step == 4:
            raise _Stop
        return out

    monkeypatch.setattr(Checkpoints, "commit", commit_then_stop)
    with pytest.raises(_Stop):
        run(ctx())
    monkeypatch.setattr(Checkpoints, "commit", commit)
    (tmp_path / "distill" / "metrics.jsonl").open("a").write('{"step": 5, "loss": 123}\n')  # a row past the ckpt
    run(ctx())
    want = [json.loads(x) for x in (run_dir / "distill" / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (tmp_path / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for k in ("loss", "kl.sft.math", "tokens", "grad_norm"):
        assert [r.get(k) for r in got] == [r.get(k) for r in want], k
