"""The rollout fleet: engines started once and leased in turn, weights pushed per lease, a dead engine replaced
(the client re-pushes its weights: the samples after the replacement equal those before), FP4 served as the fleet
says, and every start counted."""
import pytest
import torch

from rollout.engine import SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def fleet(ray_vllm, tiny_dir):
    from rollout.config import FleetConfig
    from rollout.fleet import start_fleet

    cfg = FleetConfig(engines=1, fp4=True, kv_cache_gb=0.05, return_routed_experts=False)
    return start_fleet(tiny_dir, cfg, max_model_len=256, seed=0)


def _greedy(engine, prompts):
    out = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_tokens=12))
    return [c[0].token_ids for c in out]


def test_lease_push_replace_and_count(ray_vllm, fleet, tiny_dir):
    from transformers import AutoModelForCausalLM

    from rollout.engines import folder_weights
    from rollout.fleet import LeasedEngine
    from rollout.fp4 import quantized_state_dict

    a = LeasedEngine(fleet, "stage-a")
    assert a.fp4 and a.describe()["engine"] == "vllm" and "dequantized" in a.describe()["served"]
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    with torch.no_grad():                                 # other weights than the engine started with
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a.load_weights(quantized_state_dict(model))
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    before = _greedy(a, prompts)

    # a second client waits while the only engine is leased
    import threading
    got = []
    t = threading.Thread(target=lambda: got.append(LeasedEngine(fleet, "stage-b")))
    t.start()
    t.join(3)
    assert not got, "a second lease of a 1-engine fleet must wait"

    ray_vllm.kill(a.actor)                               # the engine dies under the lease
    after = _greedy(a, prompts)                           # replaced, our weights pushed again, same samples
    assert after == before
    a.close()
    t.join(120)
    assert got and got[0].index == 0
    b = got[0]
    b.load_weights(folder_weights(tiny_dir, True))   # the starting model again: other samples
    assert _greedy(b, prompts) != before
    b.close()
    stats = ray_vllm.get(fleet.stats.remote())
    assert stats["engines"] == 1 and stats["starts"] == 2 and stats["replacements"] == 1 and stats["leases"] == 2

