"""The distill loss under DeepSpeed ZeRO-3 (on DeepSpeed's CPU accelerator): the student's output head is a
0-element placeholder outside its module's forward, so the loss must gather it (distill.loss.student_head) -- the
same steps as without ZeRO give the same losses and the same trained weights, the head included."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

WORKER = Path(__file__).with_name("zero3_distill_worker.py")


def _run(stage, tiny_dir, out_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, str(WORKER), str(stage), str(tiny_dir), str(out_file)],
                       capture_output=True, text=True, timeout=240, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, (r.stdout + r.stderr)[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.timeout(600)
def test_distill_loss_under_zero3_matches_no_zero(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    plain = _run(0, tiny_dir, tmp_path / "plain.safetensors")
    zero3 = _run(3, tiny_dir, tmp_path / "zero3.safetensors")
    assert zero3["head_partitioned"] and not plain["head_partitioned"]     # ZeRO-3 really partitions the head
    assert plain["losses"][-1] < plain["losses"][0]                        # the steps train
    assert zero3["losses"] == pytest.approx(plain["losses"], rel=1e-4)
    a, b = load_file(tmp_path / "plain.safetensors"), load_file(tmp_path / "zero3.safetensors")
    assert set(a) == set(b)
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a}
    assert max(diff.values()) < 1e-4, sorted(diff.items(), key=lambda kv: -kv[1])[:5]
    head = next(k for k in a if "lm_head" in k or "embed_tokens" in k)
    assert diff[head] < 1e-4


def test_student_head_is_the_weight_without_zero():
    import torch

    from distill.loss import student_head

    m = torch.nn.Module()
    m.head = torch.nn.Linear(8, 5, bias=False)
    m.get_output_embeddings = lambda: m.head
    assert student_head(m) is m.head.weight
    m.head.weight.ds_shape = (5, 8)                          # what ZeRO-3 marks a partitioned parameter with
    w = student_head(m)
    assert torch.equal(w, m.head.weight) and w.grad_fn is not None    # through the module: I · Wᵀ, exact
    w.sum().backward()
    assert torch.equal(m.head.weight.grad, torch.ones(5, 8))
