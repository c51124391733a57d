"""DeepSeek's GRPO stabilizers, each tested through the GRPO stage itself (not only as pure functions): a test here
fails if the stage stops applying it.

* Keep Sampling Mask + FP4 rollouts + QAT: at the first step the learner's log-probs (renormalised over the kept set,
  fake-quantized experts) equal the engine's to float precision; without the mask, or without QAT, they do not.
* Off-policy sequence masking against the engine: π_old handed to the loss is the engine's sampling log-prob, and
  the number of sequences the stage reports masked is exactly what DeepSeek-V3.2's rule gives on those tensors.
* Keep Routing from the engine: every forward of the stage (the mismatch forward and every loss forward) replays the
  experts the engine routed each token to.
* Unbiased KL: with ``kl_coef`` the reference model's log-probs reach the loss and the KL is reported.
"""
import json
from pathlib import Path

import pytest
import torch

from core.context import StageContext
from pipeline.graph import build_graph
from pipeline.recipe import Recipe


def _grpo(tmp_path, tiny_dir, name="g", steps=1, **over):
    grpo = {"steps": steps, "group_size": 4, "prompts_per_step": 2, "minibatches": 2, "save_every": 10,
            "sampling": {"temperature": 1.0, "top_p": 0.9, "top_k": 32}, "engine": {"kind": "hf", "fp4": True},
            "shaping": {"modes": {"non_think": {"l_max": 10, "l_buffer": 2, "length_cost_per_token": 0.001}}},
            "learner": {"optimizer": "adamw", "lr": 1e-4, "warmup_steps": 0, "schedule": "constant"}}
    for k, v in over.items():
        node = grpo
        *path, last = k.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    recipe = Recipe.model_validate({"name": name, "seed": 3, "domains": ["math"], "modes": ["non_think"],
                                    "tasks": {"math": {"n_train": 30, "n_eval": 2}},
                                    "learner": {"qat": over.pop("qat", "mxfp4")}, "grpo": grpo})
    spec = next(s for s in build_graph(recipe) if s.id == "grpo.math.non_think")
    ctx = StageContext(stage_id=spec.id, kind="grpo", dir=tmp_path / name, config=spec.config,
                       deps={"sft.math": Path(tiny_dir)}, seed=3)
    return ctx


def _run(ctx):
    from specialists.grpo import run

    run(ctx)
    return [json.loads(x) for x in (ctx.dir / "metrics.jsonl").read_text().splitlines()]


def test_keep_sampling_mask_fp4_and_qat_make_learner_and_engine_agree(tmp_path, tiny_dir):
    rows = _run(_grpo(tmp_path, tiny_dir, "all"))
    assert rows[0]["mismatch"] < 1e-4 and rows[0]["mismatch_kl"] < 1e-6, rows[0]
    no_mask = _run(_grpo(tmp_path, tiny_dir, "no_mask", keep_sampling_mask=False))
    assert no_mask[0]["mismatch"] > 0.05, no_mask[0]          # full-vocab log-probs vs the sampler's truncated ones


def test_without_qat_the_fp4_rollouts_are_off_policy(tmp_path, tiny_dir):
    ctx = _grpo(tmp_path, tiny_dir, "noqat", learner={"optimizer": "adamw", "lr": 1e-4, "warmup_steps": 0,
                                                       "qat": "none"})
    rows = _run(ctx)
    assert rows[0]["mismatch"] > 1e-4, rows[0]                # full-precision learner, MXFP4 engine


def test_pi_old_is_the_engine_and_the_offpolicy_mask_is_applied(tmp_path, tiny_dir, monkeypatch):
    import specialists.grpo as grpo
    from specialists.algos import offpolicy_sequence_mask

    seen = []
    real = grpo.policy_loss

    def spy(logp, old, adv, mask, **kw):
        seen.append((logp.detach().clone(), old, adv.clone(), mask.clone(), kw["offpolicy_delta"]))
        return real(logp, old, adv, mask, **kw)

    monkeypatch.setattr(grpo, "policy_loss", spy)
    real_collect = grpo.collect

    def mixed_rewards(*a, **k):                               # a tiny random model earns equal rewards: give the
        ro = real_collect(*a, **k)                            # groups a spread, so some advantages are negative
        ro.reward_P_G = torch.arange(ro.reward_P_G.numel(), dtype=torch.float).view_as(ro.reward_P_G) % 3
        return ro

    monkeypatch.setattr(grpo, "collect", mixed_rewards)
    real_to_mb = grpo.to_minibatches
    batches = []
    monkeypatch.setattr(grpo, "to_minibatches", lambda *a, **k: batches.extend(real_to_mb(*a, **k)) or batches[-2:])
    rows = _run(_grpo(tmp_path, tiny_dir, "mask", steps=1, offpolicy_delta=0.0, ppo_epochs=3, learner={
        "optimizer": "adamw", "lr": 0.05, "warmup_steps": 0, "schedule": "constant"}))
    assert len(seen) == 6 and len(batches) == 2
    batches = batches * 3                                     # epoch by epoch over the same two minibatches
    want = 0.0
    for (logp, old, adv, mask, delta), mb in zip(seen, batches):
        assert delta == 0.0
        assert old is mb.engine_logp_B_T                      # π_old: the engine's own sampling log-probs
        want += float((1 - offpolicy_sequence_mask(adv, old, logp, mask, delta)).sum())
    assert rows[0]["masked_seqs"] == want
    assert want > 0                                           # later epochs moved off the sampler (lr 0.05)


def test_keep_routing_replays_the_engines_experts_in_every_forward(tmp_path, tiny_dir, monkeypatch):
    from specialists import routing
    from specialists.routing import routes_from_sequences

    replayed = []
    real = routing.RouteReplay.replay

    def spy(self, routes):
        replayed.append([r.clone() for r in routes])
        return real(self, routes)

    monkeypatch.setattr(routing.RouteReplay, "replay", spy)
    import specialists.grpo as grpo

    real_collect = grpo.collect
    got = []
    monkeypatch.setattr(grpo, "collect", lambda *a, **k: got.append(real_collect(*a, **k)) or got[-1])
    _run(_grpo(tmp_path, tiny_dir, "routes"))
    ro = got[0]
    assert all(r is not None for r in ro.routes)              # the engine returned routes for every sequence
    # minibatch 0 and 1: one replay in the mismatch forward, one in the loss forward, each with the engine's routes
    assert len(replayed) == 4
    half = len(ro.seqs) // 2
    for mb_i, idx in enumerate((range(0, half), range(half, len(ro.seqs)))):
        L = max(len(ro.seqs[i]) for i in idx)
        want = routes_from_sequences([ro.routes[i] for i in idx], L)
        for got_routes in (replayed[mb_i], replayed[2 + mb_i]):
            assert all(torch.equal(a, b) for a, b in zip(got_routes, want))


def test_unbiased_kl_reaches_the_loss(tmp_path, tiny_dir):
    rows = _run(_grpo(tmp_path, tiny_dir, "kl", steps=2, kl_coef=0.5, learner={
        "optimizer": "adamw", "lr": 0.02, "warmup_steps": 0, "schedule": "constant"}))
    assert rows[0]["kl"] >= 0 and rows[1]["kl"] > 0             # π_θ moved away from π_ref after the first step
