"""Supervised fine-tuning pieces every SFT-style stage shares (the specialists, the base and the generalist, the seqKD
control): the loss, the training loop over tokenized examples, and the union-SFT stage body. A stage module never
imports another stage's module, so what they share lives here."""
from __future__ import annotations

import time

import torch

from rewards.tasks import load_tasks

from .data import EpochSampler, collate, sft_examples
from .evaluate import summary_of
from .ranks import stage_learner


def sft_loss(model, mb) -> tuple[torch.Tensor, dict]:
    """Sum of next-token cross-entropy over assistant tokens (``mb["weight"]`` of them)."""
    logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits[:, :-1]
    targets, mask = mb["input_ids"][:, 1:], mb["loss_mask"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                            reduction="none").view_as(mask)
    with torch.no_grad():
        acc = ((logits.argmax(-1) == targets).float() * mask).sum() / mask.sum().clamp(min=1)
    return (nll * mask).sum(), {"token_acc": float(acc)}


def sft_loop(loop, learner, examples: list, batch_size: int, seed: int, pad_id: int) -> None:
    """Run ``loop`` (``StageContext.train_loop``): each step one batch of ``examples`` (an epoch permutation per
    ``seed``, so a resumed stage continues with exactly the samples an uninterrupted one would see), one optimizer
    step of ``sft_loss``, its metrics logged and ``samples_seen`` checkpointed."""
    sampler = EpochSampler(len(examples), batch_size, seed)
    ranks = learner.ranks
    # one rank: straight onto its device; more: the group hands each rank its share and the rank moves it
    device = learner.device if ranks == 1 else None
    for step in loop:
        t0 = time.perf_counter()
        batch = [examples[i] for i in sampler.batch(step)]
        # one micro-batch per rank (data parallel over the global batch); the step's loss is the same either way
        mbs = [collate(batch[r::ranks], pad_id, device) for r in range(min(ranks, len(batch)))]
        res = learner.step(sft_loss, mbs)
        seen = (step + 1) * batch_size
        tokens = sum(mb["weight"] for mb in mbs)
        loop.log({"samples_seen": seen}, loss=res.loss, lr=res.lr, grad_norm=res.grad_norm, **res.metrics,
                 tokens=int(tokens), samples_seen=seen, tokens_per_s=tokens / max(time.perf_counter() - t0, 1e-9))


def train_sft(ctx, init, learner_cfg, examples: list, *, steps: int, batch_size: int, seed: int, save_every: int,
              keep: int, tok) -> None:
    """An SFT stage's training: its learner as the runner placed it (``stage_learner``), ``sft_loop`` resumable
    through ``ctx.train_loop``, the trained model published to ``final/`` with ``tok``, the learner's ranks closed."""
    learner = stage_learner(ctx, init, learner_cfg, steps, seed=seed)
    try:
        sft_loop(ctx.train_loop(learner, steps, save_every, keep), learner, examples, batch_size, seed,
                 tok.pad_token_id)
        ctx.publish(learner.save_pretrained, tok)
    finally:
        learner.close()


def run_union_sft(ctx, label: str) -> dict:
    """A union-SFT stage (``base``, ``generalist``; config ``train.union_config.UnionSFTStage``): every domain's
    demonstrations in every mode, each domain ``repeats[domain]`` times, trained from ``init_from`` with
    :func:`train_sft`, then the held-out evaluation on every domain x mode."""
    from transformers import AutoTokenizer

    cfg = ctx.config
    init = ctx.dep(cfg.init_from)
    tok = AutoTokenizer.from_pretrained(str(init))
    examples = []
    for d, src in cfg.tasks.items():
        tasks = load_tasks(d, "train", src.n_train, cfg.seed, src.model_dump())
        examples += sft_examples(tok, tasks, cfg.modes, cfg.max_len) * cfg.repeats.get(d, 1)   # tokenized once
    ctx.log.info(f"[{label}] {len(examples)} examples (repeats {cfg.repeats}); {cfg.steps} steps")

    train_sft(ctx, init, cfg.learner, examples, steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed,
              save_every=cfg.save_every, keep=cfg.keep_checkpoints, tok=tok)
    rows = ctx.evaluate([(d, m) for d in cfg.tasks for m in cfg.modes])
    return {"steps": cfg.steps, "final_loss": ctx.metrics.rows()[-1]["loss"], **summary_of(rows)}
