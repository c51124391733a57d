"""DeepSpeed ZeRO-2 / ZeRO-3 steps of the shared learner, on DeepSpeed's CPU accelerator (gloo).

Each case runs tests/train/zero_worker.py in its own process: DeepSpeed's distributed init is process-global.
The worker trains a reference learner (each step = two micro-batches), then trains on the full batch, saves,
and resumes in a fresh learner; it also gathers ``state_dict()`` and ``save_pretrained`` under ZeRO-3.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

WORKER = Path(__file__).with_name("zero_worker.py")


def _run(stage, tiny_dir, tmp_path, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": ""}
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, str(WORKER), str(stage), tiny_dir, str(tmp_path), *extra],
                       capture_output=True, text=True, timeout=150, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, (r.stdout + r.stderr)[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _check_common(out, rel=1e-5):
    assert out["distributed_type"] == "DEEPSPEED" and out["engine"] == "DeepSpeedEngine"
    ref = out["ref_losses"]
    assert ref[-1] < 0.6 * ref[0], ref                      # the steps train
    assert out["step_count"] == len(ref)
    assert all(g > 0 for g in out["grad_norms"])            # the engine's global norm is reported
    # two micro-batches per step == one full batch (one optimizer step per learner step, not one per micro-batch),
    # and the run saved after 3 steps then resumed by a fresh learner continues on the same trajectory
    assert out["extra"] == {"step": 3} and out["resumed_step_count"] == 3
    assert out["resumed_losses"] == pytest.approx(ref, rel=rel)
    assert out["sd_missing"] == [] and out["sd_shapes_match"]
    assert out["sd_unchanged"] == [] and out["sd_changed"] > 5   # full, trained weights
    assert out["save_pretrained_max_diff"] == 0.0


@pytest.mark.slow
def test_zero2_steps_resume(tiny_dir, tmp_path):
    out = _run(2, tiny_dir, tmp_path)
    _check_common(out)
    assert out["partitioned"] == 0                          # ZeRO-2 shards optimizer states and grads only
    assert out["sd_vs_ref_max_diff"] < 1e-5


@pytest.mark.slow
def test_zero3_steps_resume_and_gathered_state_dict(tiny_dir, tmp_path):
    out = _run(3, tiny_dir, tmp_path)
    _check_common(out)
    assert out["partitioned"] == out["n_params"]            # every parameter really is partitioned ...
    assert out["sd_vs_ref_max_diff"] < 1e-5                 # ... and state_dict() gathers the full trained weights


@pytest.mark.slow
def test_zero3_bf16_with_mxfp4_qat(tiny_dir, tmp_path):
    """The GPU recipes' learner (bf16, ZeRO-3, MXFP4 QAT) on CPU: trains, resumes, gathers clean weights."""
    out = _run(3, tiny_dir, tmp_path, "bf16", "mxfp4")
    _check_common(out, rel=2e-2)                            # bf16 sums differ with the micro-batch split
