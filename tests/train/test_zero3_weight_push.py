"""The weight push under ZeRO-3, 1 learner rank and 2 (DeepSpeed's CPU accelerator, gloo, rank 1 a Ray actor): each
bucket is gathered on its own (every rank joins that bucket's gather and only it, never two at once, never more
bytes than a bucket), only rank 0's copy travels (rank 1 returns nothing), and what the engine side receives over a
real gloo weight-sync group equals the learner's whole-model gather after a ZeRO-3 step, exactly; the FP4 push equals
``rollout.fp4.quantized_state_dict`` of an unsharded model holding those weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

WORKER = Path(__file__).with_name("zero3_push_worker.py")
ROOT = WORKER.parents[2]


def _push(tiny_dir, tmp_path, ranks: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "RAY_AUTH_MODE": "disabled"}
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(k, None)
    out = tmp_path / f"push{ranks}.json"
    r = subprocess.run([sys.executable, str(WORKER), str(tiny_dir), str(out), str(ranks)], capture_output=True,
                       text=True, timeout=1100, env=env, cwd=str(ROOT))
    assert r.returncode == 0 and out.exists(), (r.stdout + r.stderr)[-3000:]
    res = json.loads(out.read_text())
    assert res["ranks"] == ranks
    assert res["names_equal"] and res["max_diff"] == 0.0          # received == the unsharded weights, exactly
    assert res["moved"] > 0                                        # (the ZeRO-3 step changed them)
    n = res["buckets"]
    assert n >= 3 and res["model_bytes"] > 2 * res["bucket_bytes"]  # several buckets, none near the whole model
    for c in res["counters"]:                                      # on every rank:
        assert c["max_open"] == 1, c                               # never two gathers at once
        assert 1 <= len(c["gathers"]) <= n, c                      # at most one gather per bucket
        assert max(c["gathers"]) <= res["bucket_bytes"], c         # never more than a bucket's bytes
    assert [c["rank"] for c in res["counters"]] == list(range(ranks))
    # the FP4 push: the MXFP4-dequantized targets of the same weights, as rollout.fp4 quantizes an unsharded model
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rollout.fp4 import quantized_state_dict

    ref, fp4 = load_file(out.with_suffix(".ref.safetensors")), load_file(out.with_suffix(".fp4.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    model.load_state_dict(ref)
    want = quantized_state_dict(model)
    assert fp4.keys() == want.keys() and all(torch.equal(fp4[k], want[k]) for k in want)   # (files: sorted keys)
    assert any(not torch.equal(fp4[k], ref[k]) for k in ref)      # some targets were quantized
    return res


@pytest.mark.timeout(1200)
def test_zero3_push_one_rank_gathers_one_bucket_at_a_time(tiny_dir, tmp_path):
    _push(tiny_dir, tmp_path, 1)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_zero3_push_two_ranks_sends_from_rank0(tiny_dir, tmp_path):
    res = _push(tiny_dir, tmp_path, 2)
    assert len(res["returned"]) == res["buckets"]                  # one group call per bucket...
    assert all(r == [True, False] for r in res["returned"])        # ...and only rank 0's copy comes back
    assert res["counters"][0]["gathers"] == res["counters"][1]["gathers"]   # the same gathers, in the same order
