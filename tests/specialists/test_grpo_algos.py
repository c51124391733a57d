"""GRPO's pure functions against hand-computed cases, and a short GRPO run on a trivially learnable reward."""
import math

import pytest
import torch

from specialists.algos import (ADVANTAGES, LOSS_AGGREGATIONS, dr_grpo_advantages, grpo_advantages, k3_kl,
                               masked_logprobs, offpolicy_sequence_mask, policy_loss)


def test_advantages_hand_computed():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    a = grpo_advantages(r)
    std = math.sqrt(((0.75 ** 2) + 3 * (0.25 ** 2)) / 3)  # sample std of [1,0,0,0]
    assert torch.allclose(a[0], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (std + 1e-6))
    assert torch.equal(a[1], torch.zeros(4))            # a group with one reward learns nothing
    assert torch.allclose(dr_grpo_advantages(r)[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert set(ADVANTAGES.names()) >= {"grpo", "dr_grpo"}


def test_clipped_surrogate_hand_computed():
    # one sequence, two tokens; ratio 1.5 on token 0 (clipped at 1.28 for A>0), 0.5 on token 1 (unclipped for A>0)
    old = torch.log(torch.tensor([[0.2, 0.4]]))
    new = torch.log(torch.tensor([[0.3, 0.2]]))
    out = policy_loss(new, old, torch.tensor([2.0]), torch.ones(1, 2), clip_low=0.2, clip_high=0.28)
    expect = (-(1.28 * 2.0) + -(0.5 * 2.0)) / 2
    assert out.loss_sum.item() / out.denom.item() == pytest.approx(expect, rel=1e-5)
    assert out.metrics["clip_frac"] == pytest.approx(0.5)
    # negative advantage: ratio 0.5 clipped at 0.8 -> max(-0.5*A, -0.8*A) = 0.8*|A| ... min(r*A, clip*A)
    out = policy_loss(new, old, torch.tensor([-1.0]), torch.ones(1, 2), clip_low=0.2, clip_high=0.28)
    expect = (-min(1.5 * -1, 1.28 * -1) + -min(0.5 * -1, 0.8 * -1)) / 2
    assert out.loss_sum.item() / out.denom.item() == pytest.approx(expect, rel=1e-5)


def test_k3_and_unbiased_kl_term():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    k3 = k3_kl(logp, ref)
    assert k3[0, 0].item() == pytest.approx(0.5 - math.log(0.5) - 1)
    assert k3[0, 1].item() == pytest.approx(0.0, abs=1e-7)
    old = logp - math.log(2.0)  # ratio 2 everywhere
    out = policy_loss(logp, old, torch.tensor([0.0]), torch.ones(1, 2), clip_low=0.2, clip_high=0.28,
                      ref_logp_B_T=ref, kl_coef=0.1)
    assert out.loss_sum.item() == pytest.approx(0.1 * 2.0 * k3.sum().item(), rel=1e-5)
    # k3 is an unbiased estimator: E_{x~π}[k3] = KL(π‖ref) on a small categorical
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    exact = float((p * (p / q).log()).sum())
    est = float((p * k3_kl(p.log(), q.log())).sum())
    assert est == pytest.approx(exact, rel=1e-5)


def test_offpolicy_sequence_mask():
    mask = torch.ones(3, 2)
    old = torch.zeros(3, 2)
    new = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-0.1, -0.1]])  # mean log(π_old/π_θ) = 1, 1, 0.1
    adv = torch.tensor([-1.0, 1.0, -1.0])
    keep = offpolicy_sequence_mask(adv, old, new, mask, delta=0.5)
    assert keep.tolist() == [0.0, 1.0, 1.0]  # only negative advantage AND too far off-policy is dropped
    out = policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28, offpolicy_delta=0.5)
    assert out.metrics["masked_frac"] == pytest.approx(1 / 3)


def test_keep_sampling_mask_renormalises_over_kept_set():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]]]))
    keep = torch.tensor([[[1, 0, -1], [-1, -1, -1]]])                 # sparse: kept ids, -1 padded; row 2 untruncated
    lp = masked_logprobs(logits, torch.tensor([[1, 2]]), 1.0, keep)
    assert lp[0, 0].item() == pytest.approx(math.log(0.3 / 0.8), rel=1e-5)
    assert lp[0, 1].item() == pytest.approx(math.log(0.25), rel=1e-5)
    dense = torch.tensor([[[True, True, False, False]]])               # the same as a dense mask would give
    want = torch.log_softmax(logits[:, :1].masked_fill(~dense, float("-inf")), -1)[0, 0, 1]
    assert lp[0, 0].item() == pytest.approx(want.item(), rel=1e-6)
    assert masked_logprobs(logits, torch.tensor([[1, 1]]))[0, 0].item() == pytest.approx(math.log(0.3), rel=1e-5)
    logits = logits[:, :1]
    lp_t = masked_logprobs(logits, torch.tensor([[0]]), temperature=2.0)
    p = torch.softmax(logits[0, 0] / 2.0, -1)[0]
    assert lp_t.item() == pytest.approx(math.log(p), rel=1e-5)


def test_aggregations():
    loss = torch.tensor([[1.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    s, d = LOSS_AGGREGATIONS["token_mean"](loss, mask)
    assert (s / d).item() == pytest.approx(5 / 3)
    s, d = LOSS_AGGREGATIONS["seq_mean_token_mean"](loss, mask)
    assert (s / d).item() == pytest.approx((1 + 3) / 2)
    s, d = LOSS_AGGREGATIONS["dr_grpo"](loss, mask, 10)
    assert (s / d).item() == pytest.approx(5 / 20)


def test_short_grpo_run_raises_a_trivial_reward(tiny_dir):
    """Reward = share of completion tokens that are digits; 12 GRPO steps must raise it and move the weights."""
    from transformers import AutoTokenizer

    from train.config import LearnerConfig
    from rollout.engine import SamplingParams
    from rollout.engines import make_engine
    from rollout.encoding import encode_prompt
    from train.learner import Learner
    from specialists.rollouts import Rollouts, to_minibatches

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    digits = {tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    learner = Learner(tiny_dir, LearnerConfig(lr=1e-2, muon_lr=1e-2, warmup_steps=0, schedule="constant"), 50)
    engine = make_engine("hf", model_path=tiny_dir, tokenizer=tok)
    prompt = encode_prompt(tok, [{"role": "user", "content": "What is 3 + 4?"}], "non_think")
    before = {n: p.detach().clone() for n, p in learner.unwrapped.named_parameters()}
    means = []
    for step in range(12):
        engine.load_weights(learner.state_dict())
        comps = engine.generate([prompt] * 4, SamplingParams(n=8, temperature=1.0, max_tokens=12, seed=step))
        flat = [c for g in comps for c in g]
        rew = torch.tensor([sum(t in digits for t in c.token_ids) / len(c.token_ids) for c in flat]).view(4, 8)
        means.append(float(rew.mean()))
        ro = Rollouts([{}] * 4, [c.prompt_ids + c.token_ids for c in flat], [len(prompt)] * 32,
                      [[1] * len(c.token_ids) for c in flat], [c.logprobs for c in flat],
                      [[None] * len(c.token_ids) for c in flat], [c.text for c in flat],
                      [len(c.token_ids) for c in flat], [None] * 32, rew, rew, {}, [False] * 32)
        for mb in to_minibatches(ro, grpo_advantages(rew), 2, tok.pad_token_id, use_keep=False):
            with torch.no_grad():
                old = masked_logprobs(learner.model(input_ids=mb.input_ids_B_L).logits[:, :-1],
                                      mb.input_ids_B_L[:, 1:])

            def loss_fn(model, mb, old=old):
                logp = masked_logprobs(model(input_ids=mb.input_ids_B_L, attention_mask=mb.attention_mask_B_L)
                                       .logits[:, :-1], mb.input_ids_B_L[:, 1:])
                out = policy_loss(logp, old, mb.adv_B, mb.mask_B_T, clip_low=0.2, clip_high=0.28)
                return out.loss_sum, out.metrics

            mb.weight = float(mb.mask_B_T.sum())
            learner.step(loss_fn, [mb])
    assert sum(means[-3:]) / 3 > sum(means[:3]) / 3 + 0.1, means
    moved = [n for n, p in learner.unwrapped.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(moved) > 5


def test_asymmetric_advantages_shift_and_scale_by_hand():
    from specialists.algos import asymmetric

    adv = torch.tensor([[0.75, -0.25, -0.25, -0.25]])
    assert torch.equal(asymmetric(adv), adv)                                # defaults: plain GRPO
    assert torch.allclose(asymmetric(adv, negative_weight=0.5), torch.tensor([[0.75, -0.125, -0.125, -0.125]]))
    # baseline 0.1 lower: every advantage +0.1, then the negatives scaled
    assert torch.allclose(asymmetric(adv, 0.1, 0.5), torch.tensor([[0.85, -0.075, -0.075, -0.075]]))
    assert torch.allclose(asymmetric(torch.zeros(1, 3), 0.1), torch.full((1, 3), 0.1))   # all-equal group


def test_entropy_term_by_hand_and_its_sign():
    from specialists.algos import policy_loss, token_entropy

    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]], requires_grad=True)   # p = (1/4, 3/4), (1/2, 1/2)
    H = token_entropy(logits)
    want = [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2.0)]
    assert torch.allclose(H, torch.tensor([want]), atol=1e-6)
    keep = torch.tensor([[[-1], [0]]])                                  # the second position kept one token
    assert torch.allclose(token_entropy(logits, keep_ids_B_T_K=keep)[0, 1], torch.tensor(0.0))
    assert torch.allclose(token_entropy(logits, keep_ids_B_T_K=keep)[0, 0], H[0, 0])

    lp = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    base = policy_loss(lp, lp, torch.tensor([0.5]), mask, clip_low=0.2, clip_high=0.28)
    out = policy_loss(lp, lp, torch.tensor([0.5]), mask, clip_low=0.2, clip_high=0.28, entropy_B_T=H,
                      entropy_coef=-0.1)
    assert torch.allclose(out.loss_sum - base.loss_sum, 0.1 * H.sum())   # loss -= coef * H
    out.loss_sum.backward()                                              # a descent step lowers the entropy
    with torch.no_grad():
        assert float(token_entropy(logits - 1.0 * logits.grad).sum()) < float(H.sum())
