"""``grpo.micro_batch_seqs``: a rank's share of a minibatch in parts of at most that many sequences, their gradients
accumulated into the minibatch's one optimizer step. It bounds the learner's full-vocabulary logits (what Ray's
memory monitor killed SmolLM2's agent think_max GRPO stage for), and leaves the step as it was: the same losses and
weights up to float summation order, here on the tiny model through the driver's own pieces (``to_minibatches``,
``old_policy``, ``make_loss_fn``, ``train_steps``). Operational: out of the stage hash, so setting it on a run
directory re-runs nothing."""
from __future__ import annotations

import pytest
import torch

from specialists.rollouts import Rollouts, by_minibatch, to_minibatches

LEARNER = {"optimizer": "adamw", "lr": 3e-3, "warmup_steps": 0, "schedule": "constant"}


def _rollouts(step: int, vocab: int, P: int = 3, G: int = 4) -> Rollouts:
    g = torch.Generator().manual_seed(1000 + step)
    seqs, plens, masks, logps, ntoks = [], [], [], [], []
    for _ in range(P * G):
        pl, n = int(torch.randint(4, 9, (1,), generator=g)), int(torch.randint(3, 17, (1,), generator=g))
        seqs.append(torch.randint(3, vocab, (pl + n,), generator=g).tolist())
        plens.append(pl)
        masks.append([1] * n)
        logps.append((-6.0 + 0.4 * torch.randn(n, generator=g)).tolist())
        ntoks.append(n)
    reward = torch.rand(P, G, generator=g)
    return Rollouts([{}] * P, seqs, plens, masks, logps, [[None] * n for n in ntoks], [""] * (P * G), ntoks,
                    [None] * (P * G), reward, reward, {}, [False] * (P * G))


@pytest.mark.parametrize("n_mb,ranks,max_seqs", [(2, 1, None), (2, 1, 1), (2, 1, 4), (3, 2, 1), (2, 2, 2), (1, 2, 5)])
def test_parts_cover_each_sequence_once_in_order_within_the_bound(n_mb, ranks, max_seqs):
    ro = _rollouts(0, 50)
    mbs = to_minibatches(ro, torch.zeros(3, 4), n_mb, 0, False, ranks=ranks, max_seqs=max_seqs)
    steps = by_minibatch(mbs)
    assert len(steps) == n_mb
    assert sum(mb.n_seqs for mb in mbs) == 12
    size = -(-12 // n_mb)
    for k, parts in enumerate(steps):
        share = min(size, 12 - k * size)
        assert sum(mb.n_seqs for mb in parts) == share
        if max_seqs:
            assert all(mb.n_seqs <= max_seqs for mb in parts)
            assert len(parts) % ranks == 0 or len(parts) == share   # every rank gets parts, none empty
        else:
            assert len(parts) == min(ranks, share)
    # fixed order: the rows, read back in part order, are the rollouts' sequences
    rows = [row.tolist() for mb in mbs for row in mb.input_ids_B_L]
    assert [r[:len(s)] for r, s in zip(rows, ro.seqs)] == ro.seqs and len(rows) == 12


AGGS = ("token_mean", "seq_mean_token_mean", "dr_grpo")


def _train(tiny_dir, max_seqs) -> tuple[list[float], dict]:
    """3 steps of 2 minibatches, the loss aggregation cycling (as tests/train/test_dp_global_batch.py)."""
    from transformers import AutoTokenizer

    from specialists.algos import ADVANTAGES
    from specialists.config import GRPOConfig
    from specialists.grpo import make_loss_fn, old_policy, train_steps
    from train.config import LearnerConfig
    from train.ranks import make_learner

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    learner = make_learner(tiny_dir, LearnerConfig(**LEARNER), 3, seed=0, ranks=1)
    vocab = learner.unwrapped.config.vocab_size
    losses, parts = [], []
    for step in range(3):
        g = GRPOConfig(loss_agg=AGGS[step], entropy_coef=-0.1, offpolicy_delta=0.05, minibatches=2,
                       keep_routing=False, micro_batch_seqs=max_seqs)
        ro = _rollouts(step, vocab)
        mbs = to_minibatches(ro, ADVANTAGES["dr_grpo"](ro.reward_P_G), g.minibatches, tok.pad_token_id, False,
                             learner.device, learner.ranks, g.micro_batch_seqs)
        old_policy(learner, None, None, mbs, g, 16)
        parts.append(len(mbs))
        losses += [r.loss for r in train_steps(learner, make_loss_fn(g, 16), by_minibatch(mbs), 1)]
    weights = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    learner.close()
    return losses, weights, parts


def test_micro_batches_take_the_same_steps(tiny_dir):
    """Losses at 1e-5 relative (each step's loss is computed on the weights the previous steps made). The weights
    at 1e-3 of each tensor's largest entry: AdamW's update g / sqrt(v) is about lr x sign(g) where g is near 0, so
    a last-bit difference in a near-zero gradient moves that entry by up to 2 lr (measured: 3.3e-4)."""
    base_l, base_w, base_parts = _train(tiny_dir, None)
    assert base_parts == [2, 2, 2]
    start = _initial(tiny_dir)
    moved = max(float((base_w[k] - start[k]).abs().max()) for k in base_w)
    assert moved > 1e-3      # the steps trained: equal weights are not two untouched models
    for max_seqs, n_parts in ((1, 12), (4, 4)):
        l, w, parts = _train(tiny_dir, max_seqs)
        assert parts == [n_parts] * 3
        assert max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(base_l, l)) < 1e-5, (max_seqs, base_l, l)
        worst = max(float((base_w[k] - w[k]).abs().max() / base_w[k].abs().max().clamp(min=1e-12)) for k in base_w)
        assert worst < 1e-3, (max_seqs, worst)


def _initial(tiny_dir) -> dict:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_dir)
    return {k: v.detach() for k, v in m.state_dict().items()}


def test_operational_and_per_domain():
    from conftest import ROOT
    from pipeline.graph import config_hash
    from pipeline.recipe import RecipeError, load_with_graph

    think_max = ROOT / "recipes" / "think_max.yaml"
    plain = {s.id: config_hash(s) for s in load_with_graph(think_max)[1] if s.kind == "grpo"}
    recipe, graph = load_with_graph(think_max, ["grpo.per_domain.agent.micro_batch_seqs=2"])
    assert {s.id: config_hash(s) for s in graph if s.kind == "grpo"} == plain   # a run's stages stay up to date
    by_id = {s.id: s for s in graph}
    assert by_id["grpo.agent.think_max"].config.grpo.micro_batch_seqs == 2
    assert by_id["grpo.math.think_max"].config.grpo.micro_batch_seqs is None
    with pytest.raises(RecipeError, match="micro_batch_seqs"):
        load_with_graph(think_max, ["grpo.micro_batch_seqs=0"])
