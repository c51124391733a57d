"""Keep Routing: record/replay for every supported router family, on tiny random models built from configs
(``routing_models``).

For each family: (a) record then replay with identical weights reproduces the logits exactly; (b) after the router
weights move (so the router would choose differently) replay feeds the recorded experts to the experts module, changes
the outputs against a plain forward, and gradients reach the router; (c) the same "experts used == recorded" check
fails on a plain forward, so a missing replay is detected. Replayed gate weights are the family's own. Dense models
are inactive; unsupported MoE routing is a one-line ValueError, bad routes and bypassed routers raise. Engine routes
replayed in the learner: ``test_routing_engine.py``.
"""
import pytest
import torch
from routing_models import (COMMON, FAMILIES, FAMILY_OF, ExpertsSeen, assert_same_experts, build, inputs, logprobs,
                            perturb_routers)
from torch import nn

from specialists import router_families as routing
from specialists.router_families import RouterFamily
from specialists.routing import RouteReplay, route_agreement


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
