"""The shared learner: training moves the loss, and save/load resumes bit-exactly."""
import torch
from transformers import AutoTokenizer

from train.config import LearnerConfig
from rewards.tasks import generate
from train.data import EpochSampler, collate, sft_examples
from train.learner import Learner
from train.sft import sft_loss


def _batches(tiny_dir, n_steps, bs=4):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ex = sft_examples(tok, generate("math", "train", 20, 0), ["non_think", "think_high"], 128)
    sampler = EpochSampler(len(ex), bs, seed=3)
    return [collate([ex[i] for i in sampler.batch(s)], tok.pad_token_id) for s in range(n_steps)]


def test_training_reduces_loss(tiny_dir):
    cfg = LearnerConfig(lr=1e-2, muon_lr=1e-2, warmup_steps=0, schedule="constant")
    learner = Learner(tiny_dir, cfg, total_steps=30, seed=0)
    batches = _batches(tiny_dir, 1)
    before = {n: p.detach().clone() for n, p in learner.unwrapped.named_parameters()}
    losses = [learner.step(sft_loss, [batches[0]]).loss for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0], losses
    changed = [n for n, p in learner.unwrapped.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any("experts" in n for n in changed) and "lm_head.weight" in changed


def test_micro_batches_equal_full_batch(tiny_dir):
    cfg = LearnerConfig(optimizer="adamw", warmup_steps=0, schedule="constant", grad_clip=0)
    b = _batches(tiny_dir, 1, bs=4)[0]
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ex = sft_examples(tok, generate("math", "train", 20, 0), ["non_think", "think_high"], 128)
    sampler = EpochSampler(len(ex), 4, seed=3)
    idx = sampler.batch(0)
    halves = [collate([ex[i] for i in idx[:2]], tok.pad_token_id), collate([ex[i] for i in idx[2:]], tok.pad_token_id)]
    grads = []
    for batches in ([b], halves):
        learner = Learner(tiny_dir, cfg, 10, seed=0)
        seen = {}
        learner.optimizer.step = lambda *a, _l=learner, _s=seen: _s.update(
            {n: p.grad.clone() for n, p in _l.unwrapped.named_parameters() if p.grad is not None})
        res = learner.step(sft_loss, batches)
        grads.append((res.loss, seen))
    (loss1, g1), (loss2, g2) = grads
    assert abs(loss1 - loss2) < 1e-5
    assert g1.keys() == g2.keys() and len(g1) > 5
    for n in g1:
        assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-7), n


def test_save_load_resumes_exactly(tiny_dir, tmp_path):
    cfg = LearnerConfig(lr=5e-3, muon_lr=5e-3, warmup_steps=2)
    batches = _batches(tiny_dir, 6)
    full = Learner(tiny_dir, cfg, total_steps=6, seed=0)
    ref = [full.step(sft_loss, [b]).loss for b in batches]

    first = Learner(tiny_dir, cfg, total_steps=6, seed=0)
    got = [first.step(sft_loss, [b]).loss for b in batches[:3]]
    first.save(tmp_path, {"step": 3})
    torch.manual_seed(999)  # the checkpoint restores RNG state too
    second = Learner(tiny_dir, cfg, total_steps=6, seed=0)
    assert second.load(tmp_path) == {"step": 3} and second.step_count == 3
    got += [second.step(sft_loss, [b]).loss for b in batches[3:]]
    assert got == ref  # bit-exact: same weights, optimizer moments, schedule position
    for p1, p2 in zip(full.unwrapped.parameters(), second.unwrapped.parameters()):
        assert torch.equal(p1, p2)


def test_sampler_is_a_function_of_step():
    s = EpochSampler(10, 4, seed=1)
    seen = [i for step in range(5) for i in s.batch(step)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert EpochSampler(10, 4, seed=1).batch(3) == s.batch(3)
