"""Keep Routing with an engine's routes: routes recorded by an engine (vLLM's per-sequence layout, a transformers
engine's generate loop captured step by step) and replayed in the learner reproduce the engine's log-probs, and not
without the replay; the learner's padding rows keep the router's own choice. Tiny random MoE models from
``routing_models``; the router families themselves: ``test_routing.py``.
"""
import copy

import pytest
import torch
from routing_models import V, ExpertsSeen, build, inputs, logprobs, perturb_routers

from rollout.routes import stitch_steps
from specialists import router_families as routing
from specialists.routing import RouteReplay, route_agreement, routes_from_engine, routes_from_sequences


@pytest.mark.parametrize("name", ["deepseek_v3", "glm4_moe", "deepseek_v4"])
def test_engine_routes_reproduce_engine_logprobs(name):
    """The engine routes differently from the learner (its e_score_correction_bias, a selection-only buffer, is
    stale); every weight is identical. The engine returns vLLM-style per-sequence routes [L, num_hidden_layers, k]
    (dense layers included, no route for the last token); the learner's right-padded batch replays them and
    reproduces the engine's log-probs; without the replay it does not."""
    learner = build(name)
    engine = copy.deepcopy(learner)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in routing.routers(engine):
            if hasattr(m, "e_score_correction_bias"):
                m.e_score_correction_bias.copy_(torch.randn(m.num_experts, generator=g))
    rr = RouteReplay(learner)
    eng_hooks = RouteReplay(engine)
    L = learner.config.num_hidden_layers
    lens = [9, 6, 11]
    seqs = [torch.randint(3, V, (n,), generator=g) for n in lens]
    engine_lp, engine_routes = [], []
    with torch.no_grad():
        for s in seqs:                                   # the engine runs each sequence on its own, unpadded
            with eng_hooks.record() as rec:
                _, lp = logprobs(engine, s[None])
            engine_lp.append(lp[0])
            per_tok = torch.zeros(len(s), L, rec[0].shape[-1], dtype=torch.uint8)   # vLLM: uint8, all layers
            for lid, r in zip(eng_hooks.layer_ids, rec):
                per_tok[:, lid] = r.to(torch.uint8)
            engine_routes.append(per_tok[:-1])           # the last sampled token was never fed to the engine
    T = max(lens)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, :len(s)], attn[b, :len(s)] = s, 1
    routes = routes_from_sequences(engine_routes, T, layer_ids=rr.layer_ids)
    assert len(routes) == len(rr) and all(r.shape == (len(seqs) * T, r.shape[1]) for r in routes)
    with torch.no_grad():
        with rr.replay(routes):
            _, lp = logprobs(learner, ids, attn)
        _, lp_plain = logprobs(learner, ids, attn)
    err = max(float((lp[b, :n - 1] - engine_lp[b]).abs().max()) for b, n in enumerate(lens))
    err_plain = max(float((lp_plain[b, :n - 1] - engine_lp[b]).abs().max()) for b, n in enumerate(lens))
    assert err < 1e-5, err
    assert err_plain > 1e-3, err_plain                   # removing the replay fails the check


def test_capture_generation_then_replay():
    """A transformers engine's generate loop (prefill shared by a group of 2, then KV-cached decode steps) captured
    with capture(): stitched routes have the learner layout, agree with a full forward, and replayed in the learner
    reproduce the engine's log-probs of the sampled tokens."""
    model = build("qwen3_moe")
    rr = RouteReplay(model)
    P, n, steps = 2, 2, 4
    prompts = inputs(B=P, T=5, seed=3)
    sampled, eng_lp = [], []
    with torch.no_grad(), rr.capture() as cap:
        out = model(input_ids=prompts, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].repeat_interleave(n, 0)
        cache.batch_repeat_interleave(n)
        g = torch.Generator().manual_seed(0)
        for j in range(steps):
            lp = torch.log_softmax(logits.float(), -1)
            nxt = torch.multinomial(lp.exp(), 1, generator=g)
            sampled.append(nxt)
            eng_lp.append(lp.gather(-1, nxt))
            if j < steps - 1:                         # the last sampled token is never fed back
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                cache, logits = out.past_key_values, out.logits[:, -1]
    assert len(cap) == steps and cap[0].shape == (P * 5, len(rr), 2) and cap[1].shape == (P * n, len(rr), 2)
    stitched = stitch_steps(cap, batch_size=P * n, prefill_batch=P)          # [B, 5 + steps - 1, layers, k]
    seqs = torch.cat([prompts.repeat_interleave(n, 0), torch.cat(sampled, 1)], 1)
    assert stitched.shape == (P * n, seqs.shape[1] - 1, len(rr), 2)
    routes = routes_from_sequences(list(stitched), seqs.shape[1])
    with torch.no_grad():
        with rr.record() as full:
            model(input_ids=seqs)
        assert route_agreement(routes, full) > 0.97      # same weights: cached decode routes ~ full-forward routes
        with rr.replay(routes):
            _, lp = logprobs(model, seqs)
    assert torch.allclose(lp[:, -steps:], torch.cat(eng_lp, 1), atol=1e-5)


def test_padding_rows_keep_the_routers_choice():
    """Rows marked -1 (the learner's padding, via attention_mask) are routed by the router itself."""
    model = build("qwen3_moe")
    rr = RouteReplay(model)
    ids = inputs(B=2, T=6)
    attn = torch.ones_like(ids)
    attn[1, 4:] = 0
    with torch.no_grad(), rr.record() as rec:
        model(input_ids=ids, attention_mask=attn)
    perturb_routers(model)
    with torch.no_grad(), rr.record() as own:
        model(input_ids=ids, attention_mask=attn)
    routes = routes_from_engine([r.view(2, 6, -1) for r in rec], attention_mask=attn)
    pad = attn.reshape(-1) == 0
    assert all((r[pad] == -1).all() and torch.equal(r[~pad], x[~pad]) for r, x in zip(routes, rec))
    with torch.no_grad(), rr.replay(routes), ExpertsSeen(model) as seen:
        model(input_ids=ids, attention_mask=attn)
    for s, r, o in zip(seen, rec, own):
        assert torch.equal(s[~pad], r[~pad]) and torch.equal(s[pad], o[pad])
