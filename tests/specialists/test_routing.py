"""Keep Routing: record/replay for every supported router family, on tiny random models built from configs.

For each family: (a) record then replay with identical weights reproduces the logits exactly; (b) after the router
weights move (so the router would choose differently) replay feeds the recorded experts to the experts module, changes
the outputs against a plain forward, and gradients reach the router; (c) the same "experts used == recorded" check
fails on a plain forward, so a missing replay is detected. Engine routes (vLLM's per-sequence layout, transformers
engine capture) replayed in the learner reproduce the engine's log-probs, and not without the replay. Unsupported MoE
routing is a one-line ValueError.
"""
import copy

import pytest
import torch
from torch import nn

from rollout.routes import stitch_steps
from specialists import router_families as routing
from specialists.router_families import RouterFamily
from specialists.routing import RouteReplay, route_agreement, routes_from_engine, routes_from_sequences

V, H = 64, 32
COMMON = dict(vocab_size=V, hidden_size=H, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)

MLA = {**COMMON, "num_key_value_heads": 2}   # MLA models: a padded batch with fewer KV heads trips transformers' sdpa


def _cfg(name):
    import transformers as T
    if name == "qwen3_moe":
        return T.Qwen3MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=2,
                                num_experts=8, num_experts_per_tok=2, head_dim=16, norm_topk_prob=True)
    if name == "qwen3_moe_nonorm":
        return T.Qwen3MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=1,
                                num_experts=8, num_experts_per_tok=2, head_dim=16, norm_topk_prob=False)
    if name == "qwen2_moe":
        return T.Qwen2MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=2,
                                shared_expert_intermediate_size=16, num_experts=8, num_experts_per_tok=2)
    if name == "olmoe":
        return T.OlmoeConfig(**COMMON, intermediate_size=16, num_hidden_layers=2, num_experts=8,
                             num_experts_per_tok=2)
    if name == "mixtral":
        return T.MixtralConfig(**COMMON, intermediate_size=16, num_hidden_layers=2, num_local_experts=8,
                               num_experts_per_tok=2)
    if name == "deepseek_v2":
        return T.DeepseekV2Config(**MLA, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=2,
                                  n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
                                  topk_method="group_limited_greedy", first_k_dense_replace=0, q_lora_rank=None,
                                  routed_scaling_factor=2.0, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                  v_head_dim=16)
    if name == "deepseek_v3":   # layer 0 dense, layer 1-2 MoE with group-limited routing (4 groups, 2 kept)
        return T.DeepseekV3Config(**MLA, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=3,
                                  n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
                                  first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8,
                                  qk_nope_head_dim=8, v_head_dim=16, routed_scaling_factor=2.5,
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if name == "glm4_moe":
        return T.Glm4MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=2,
                               n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                               first_k_dense_replace=0, head_dim=16, routed_scaling_factor=1.8)
    if name == "gpt_oss":
        return T.GptOssConfig(**COMMON, intermediate_size=16, num_hidden_layers=2, num_local_experts=8,
                              num_experts_per_tok=2, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"])
    if name == "deepseek_v4":   # layer 0: hash router (token-id table), layers 1-2: sqrt-softplus top-k
        return T.DeepseekV4Config(**COMMON, head_dim=16, q_lora_rank=16,
                                  moe_intermediate_size=16, num_hidden_layers=3, n_routed_experts=8,
                                  num_experts_per_tok=2, mlp_layer_types=["hash_moe", "moe", "moe"],
                                  layer_types=["compressed_sparse_attention", "heavily_compressed_attention",
                                               "compressed_sparse_attention"],
                                  hc_mult=2, o_groups=2, o_lora_rank=8, index_n_heads=2, index_head_dim=8,
                                  index_topk=4, sliding_window=8, partial_rotary_factor=0.5)
    raise KeyError(name)


FAMILY_OF = {"qwen3_moe": "softmax_topk", "qwen2_moe": "softmax_topk", "olmoe": "softmax_topk",
             "mixtral": "mixtral", "deepseek_v2": "deepseek_v2", "deepseek_v3": "sigmoid_grouped",
             "glm4_moe": "sigmoid_grouped", "gpt_oss": "gpt_oss", "deepseek_v4": "deepseek_v4"}


def build(name, seed=0):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_cfg(name), dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():                       # decisive, distinct routing (random init leaves routers near zero)
        for m in routing.routers(model):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
            if hasattr(m, "e_score_correction_bias"):
                m.e_score_correction_bias.copy_(torch.randn(m.num_experts, generator=g) * 0.05)
            if hasattr(m, "tid2eid"):           # a real table: k distinct experts per token id
                m.tid2eid.copy_(torch.stack([torch.randperm(m.num_experts, generator=g)[:m.top_k]
                                             for _ in range(m.tid2eid.shape[0])]))
    return model


def inputs(B=3, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (B, T), generator=g)


def logprobs(model, ids, attention_mask=None):
    logits = model(input_ids=ids, attention_mask=attention_mask).logits[:, :-1].float()
    return logits, torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


class ExpertsSeen:
    """The expert indices each MoE block's experts module actually receives (independent of RouteReplay)."""

    def __init__(self, model):
        self.blocks = [m.experts for m in model.modules() if "experts" in dict(m.named_children())]
        self.seen: list[torch.Tensor] = []
        self.handles = []

    def __enter__(self):
        def hook(module, args, kwargs):
            idx = args[1] if len(args) > 1 else kwargs.get("top_k_index", kwargs.get("router_indices"))
            self.seen.append(idx.detach().clone())
        self.handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in self.blocks]
        return self.seen

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def assert_same_experts(seen, recorded):
    assert len(seen) == len(recorded)
    for s, r in zip(seen, recorded):
        assert torch.equal(s.sort(-1).values, r.sort(-1).values), "experts used differ from the recorded routes"


def perturb_routers(model, scale=1.0, seed=123):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in routing.routers(model):
            m.weight.add_(torch.randn(m.weight.shape, generator=g) * scale)
            if getattr(m, "bias", None) is not None:
                m.bias.add_(torch.randn(m.bias.shape, generator=g) * scale)


FAMILIES = list(FAMILY_OF)


@pytest.mark.parametrize("name", FAMILIES)
def test_families_identified(name):
    model = build(name)
    rr = RouteReplay(model)
    assert rr.active
    fams = {f.name for f in rr.families}
    expect = {FAMILY_OF[name]} | ({"deepseek_v4_hash"} if name == "deepseek_v4" else set())
    assert fams == expect
    cfg = model.config
    moe_layers = [i for i in range(cfg.num_hidden_layers) if i >= getattr(cfg, "first_k_dense_replace", 0)]
    assert rr.layer_ids == moe_layers


@pytest.mark.parametrize("name", FAMILIES)
def test_replay_identical_weights_is_exact(name):
    """(a) record, then replay with the same weights: identical logits and log-probs, recorded experts used."""
    model = build(name)
    rr = RouteReplay(model)
    ids = inputs()
    with torch.no_grad():
        with rr.record() as rec:
            logits, lp = logprobs(model, ids)
        assert len(rec) == len(rr) and all(r.shape == (ids.numel(), m.top_k) for r, m in zip(rec, rr.routers))
        with rr.replay(rec), ExpertsSeen(model) as seen:
            logits2, lp2 = logprobs(model, ids)
    assert torch.equal(logits, logits2)
    assert torch.equal(lp, lp2)
    assert_same_experts(seen, rec)


@pytest.mark.parametrize("name", FAMILIES)
def test_replay_after_update_uses_recorded_experts(name):
    """(b) the router moved: replay still routes to the recorded experts, outputs differ from a plain forward,
    gradients reach every router; (c) a plain forward fails the same-experts check (a missing replay is caught)."""
    model = build(name)
    rr = RouteReplay(model)
    ids = inputs()
    with torch.no_grad(), rr.record() as rec:
        _, lp_old = logprobs(model, ids)
    perturb_routers(model)

    with torch.no_grad():
        with rr.record() as plain_routes, ExpertsSeen(model) as plain_seen:
            _, lp_plain = logprobs(model, ids)
    assert route_agreement(plain_routes, rec) < 0.9            # the update really changes the routing
    with pytest.raises(AssertionError, match="experts used differ"):
        assert_same_experts(plain_seen, rec)                  # (c) no replay -> detected

    model.zero_grad()
    with rr.replay(rec), ExpertsSeen(model) as seen, rr.record() as replayed_routes:
        _, lp = logprobs(model, ids)
    assert_same_experts(seen, rec)
    assert route_agreement(replayed_routes, rec) == 1.0
    assert not torch.allclose(lp, lp_plain, atol=1e-4)
    assert not torch.allclose(lp, lp_old, atol=1e-6)          # the gate weights follow the moved router
    lp.sum().backward()
    for name_, m in zip(rr.names, rr.routers):
        assert m.weight.grad is not None and torch.isfinite(m.weight.grad).all(), name_
        assert m.weight.grad.abs().sum() > 0, name_
        if getattr(m, "bias", None) is not None:
            assert m.bias.grad is not None and m.bias.grad.abs().sum() > 0, name_


@pytest.mark.parametrize("name", ["qwen3_moe", "deepseek_v3", "gpt_oss", "deepseek_v4"])
def test_replay_weights_are_the_familys_own(name):
    """Replayed gate weights = the module's own weights whenever the given experts are the ones it picks, per token:
    replay other experts on some tokens only, the rest must match a plain forward's weights exactly."""
    model = build(name)
    rr = RouteReplay(model)
    ids = inputs(B=2, T=6)
    outs, got = {}, {}

    def grab(store):
        def hook(i):
            return lambda mod, a, out: store.__setitem__(i, out)
        return [r.register_forward_hook(hook(i)) for i, r in enumerate(rr.routers)]

    hs = grab(outs)
    with torch.no_grad(), rr.record() as rec:
        model(input_ids=ids)
    for h in hs:
        h.remove()
    swapped = [r.clone() for r in rec]
    for r, m in zip(swapped, rr.routers):
        r[::2] = (r[::2] + 1) % m.num_experts                  # other experts on even tokens
    hs = grab(got)
    with torch.no_grad(), rr.replay(swapped):
        model(input_ids=ids)
    for h in hs:
        h.remove()
    for i, m in enumerate(rr.routers):
        idx, w = got[i][2], got[i][1]
        assert torch.equal(idx, swapped[i])
        assert w.dtype == outs[i][1].dtype
        fam = rr.families[i]
        assert torch.equal(w, fam.weights_for(m, got[i][0], swapped[i]))
        if i == 0:   # layer 0 sees the same hidden states in both forwards: odd tokens untouched -> exact weights
            assert torch.equal(w[1::2], outs[i][1][1::2])


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


def test_dense_model_is_inactive():
    from transformers import AutoModelForCausalLM, Qwen3Config
    model = AutoModelForCausalLM.from_config(Qwen3Config(**COMMON, intermediate_size=32, num_hidden_layers=1,
                                                         head_dim=16))
    rr = RouteReplay(model)
    assert not rr.active
    with rr.record() as rec:
        model(input_ids=inputs(B=1, T=4))
    assert rec == []
    with rr.replay(rec):
        model(input_ids=inputs(B=1, T=4))


class ToyTopKRouter(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 8))

    def forward(self, h):
        logits = h @ self.weight.T
        w, i = logits.softmax(-1).topk(2)
        return logits, w, i


class ToyMoE(nn.Module):
    def __init__(self, gate):
        super().__init__()
        self.gate = gate
        self.experts = nn.ModuleList([nn.Linear(8, 8) for _ in range(4)])


def _one_line_error(model, match):
    with pytest.raises(ValueError, match=match) as e:
        RouteReplay(model)
    assert "\n" not in str(e.value)


def test_unsupported_routers_are_a_one_line_error():
    """(d) an MoE router of a family we cannot replay fails at construction, naming the class."""
    _one_line_error(nn.Sequential(ToyMoE(ToyTopKRouter())), "ToyTopKRouter")
    _one_line_error(nn.Sequential(ToyMoE(nn.Linear(8, 4))), "Linear of ToyMoE")     # routing inside the block
    from transformers import AutoModelForCausalLM, GraniteMoeConfig
    granite = AutoModelForCausalLM.from_config(GraniteMoeConfig(**COMMON, intermediate_size=16, num_hidden_layers=1,
                                                                num_local_experts=4, num_experts_per_tok=2))
    _one_line_error(granite, "GraniteMoeTopKRouter")


def test_family_that_does_not_match_the_module_fails_the_probe(monkeypatch):
    """A router whose maths is not its family's (here: a Qwen3 router without top-k renormalisation registered as
    always-renormalising) is refused at construction rather than replayed with the wrong weights."""
    wrong = RouterFamily("wrong", ("Qwen3MoeTopKRouter",), routing.FAMILIES[2].select, routing.FAMILIES[2].weights_for)
    assert routing.FAMILIES[2].name == "mixtral"
    monkeypatch.setattr(routing, "FAMILIES", [wrong, *routing.FAMILIES])
    _one_line_error(build("qwen3_moe_nonorm"), "Qwen3MoeTopKRouter.*no longer matches")
    monkeypatch.undo()
    assert RouteReplay(build("qwen3_moe_nonorm")).families[0].name == "softmax_topk"


def test_bad_routes_and_bypassed_routers_raise():
    model = build("qwen3_moe")
    rr = RouteReplay(model)
    ids = inputs(B=2, T=5)
    with torch.no_grad(), rr.record() as rec:
        model(input_ids=ids)
    with pytest.raises(ValueError, match="route tensors"):
        with rr.replay(rec[:1]):
            pass
    with pytest.raises(ValueError, match="expected"):
        with rr.replay([r[:, :1] for r in rec]):
            pass
    with pytest.raises(ValueError, match="same \\[B, T\\] batch"), torch.no_grad():
        with rr.replay(rec):
            model(input_ids=ids[:1])
    with pytest.raises(RuntimeError, match="forwards inside one record"), torch.no_grad():
        with rr.record():
            model(input_ids=ids)
            model(input_ids=ids)
    with pytest.raises(RuntimeError, match="no MoE router ran"):
        with rr.record():
            pass
    model.gradient_checkpointing_enable()        # backward recomputation would run outside the replay
    with pytest.raises(RuntimeError, match="gradient checkpointing"):
        with rr.replay(rec):
            pass
    model.gradient_checkpointing_disable()
    # a fused MoE kernel that never calls the router module: the replay would be a silent no-op
    for layers in ([1], [0, 1]):
        for i in layers:
            model.model.layers[i].mlp.forward = lambda h: torch.zeros_like(h)
        with pytest.raises(RuntimeError, match="never reached"), torch.no_grad():
            with rr.replay(rec):
                model(input_ids=ids)
