import torch

from train.learner import split_params
from train.muon import V4_SCHEDULE, HybridMuon, newton_schulz


def test_v4_schedule_is_the_reported_one():
    assert V4_SCHEDULE == (((3.4445, -4.7750, 2.0315), 8), ((2.0, -1.5, 0.5), 2))


def test_hybrid_newton_schulz_orthogonalizes_each_expert():
    torch.manual_seed(0)
    g = torch.randn(3, 16, 48)
    o = newton_schulz(g)
    s = torch.linalg.svdvals(o)
    assert torch.allclose(s, torch.ones_like(s), atol=2e-2), s   # the 2 final (2,-1.5,0.5) steps converge to 1
    for e in range(3):  # batched == one expert at a time
        assert torch.allclose(o[e], newton_schulz(g[e]), atol=1e-5)
    # the first stage alone leaves singular values spread (what the hybrid schedule fixes)
    s1 = torch.linalg.svdvals(newton_schulz(g, schedule=V4_SCHEDULE[:1]))
    assert (s1 - 1).abs().max() > (s - 1).abs().max()


def test_tall_matrix_transposed_consistently():
    g = torch.randn(40, 8)
    o = newton_schulz(g)
    assert torch.allclose(o.T @ o, torch.eye(8), atol=3e-2)


def test_matches_torch_muon_single_stage():
    """With torch's own single-stage schedule our step equals torch.optim.Muon's up to its bf16 NS."""
    torch.manual_seed(1)
    p1 = torch.nn.Parameter(torch.randn(16, 32))
    p2 = torch.nn.Parameter(p1.detach().clone())
    grad = torch.randn(16, 32)
    ours = HybridMuon([p1], lr=0.1, schedule=(((3.4445, -4.7750, 2.0315), 5),), adjust_lr_fn="original")
    ref = torch.optim.Muon([p2], lr=0.1, weight_decay=0.0, adjust_lr_fn="original")
    for p, opt in ((p1, ours), (p2, ref)):
        p.grad = grad.clone()
        opt.step()
    assert torch.allclose(p1, p2, atol=2e-2)
    assert not torch.equal(p1, p2.detach().clone().fill_(0))


def test_muon_groups_cover_fused_experts():
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    cfg = Qwen3MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=64, moe_intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                         num_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg)
    muon, adamw = split_params(model)
    assert any("experts.gate_up_proj" in n for n in muon) and any("experts.down_proj" in n for n in muon)
    assert any("q_proj" in n for n in muon)
    for n in adamw:
        assert any(k in n for k in ("embed", "lm_head", "norm", "gate.weight")), n
    assert "lm_head.weight" in adamw and "model.embed_tokens.weight" in adamw
    assert any(n.endswith("mlp.gate.weight") for n in adamw)  # the router stays on AdamW
    assert len(muon) + len(adamw) == len(list(model.parameters()))
    # one step moves every expert
    opt = HybridMuon([dict(model.named_parameters())[n] for n in muon], lr=0.01)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in muon}
    model(torch.randint(0, 128, (2, 8)), labels=torch.randint(0, 128, (2, 8))).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if "experts" in n:
            moved = (p.detach() - before[n]).flatten(1).norm(dim=1)
            assert (moved > 0).all(), n
