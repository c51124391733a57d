"""Stage ``sft.<domain>``: supervised fine-tuning on the domain's demonstrations in every reasoning mode.

Assistant-only loss on chat-formatted demonstrations; metrics per step to ``metrics.jsonl``; checkpoints every
``save_every`` steps (resumed exactly after a kill); at the end ``final/`` (Hugging Face format) and held-out
accuracy per mode, for the starting model and the trained one, recorded in the manifest.

    pipeline run recipes/think_max.yaml --only sft.math
"""
from __future__ import annotations

import shutil
import time

import torch

from pipeline.core.registry import register_stage
from pipeline.core.rundir import replace_dir
from rewards.tasks import load_tasks
from rollout.hf_engine import HFEngine

from .data import EpochSampler, collate, sft_examples
from .evaluate import evaluate
from .learner import Learner


def sft_loss(model, mb) -> tuple[torch.Tensor, dict]:
    """Sum of next-token cross-entropy over assistant tokens (``mb["weight"]`` of them)."""
    logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits[:, :-1]
    targets, mask = mb["input_ids"][:, 1:], mb["loss_mask"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                            reduction="none").view_as(mask)
    with torch.no_grad():
        acc = ((logits.argmax(-1) == targets).float() * mask).sum() / mask.sum().clamp(min=1)
    return (nll * mask).sum(), {"token_acc": float(acc)}


def held_out(ctx, model_dir, tok, samples) -> dict:
    cfg = ctx.config
    engine = HFEngine(model_path=str(model_dir), tokenizer=tok)
    return evaluate(engine, tok, ctx.domain, samples, ctx.recipe.modes, cfg.eval_max_tokens,
                    workers=ctx.num_cpus)


@register_stage("sft")
def run(ctx) -> dict:
    from transformers import AutoTokenizer

    cfg, recipe = ctx.config, ctx.recipe
    init = ctx.dep(cfg.init_from)
    tok = AutoTokenizer.from_pretrained(str(init))
    src = recipe.task_source(ctx.domain)
    train = load_tasks(ctx.domain, "train", src.n_train, recipe.seed, src.model_dump())
    test = load_tasks(ctx.domain, "test", src.n_eval, recipe.seed, src.model_dump())
    examples = sft_examples(tok, train, recipe.modes, cfg.max_len)
    ctx.log.info(f"[{ctx.stage_id}] {len(examples)} examples from {len(train)} tasks x {len(recipe.modes)} modes")

    learner = Learner(init, recipe.learner_for(cfg.learner), cfg.steps, seed=recipe.seed)
    ckpts = ctx.checkpoints(cfg.keep_checkpoints)
    start, latest = 0, ckpts.latest()
    if latest is not None:
        start = learner.load(latest)["step"]
        ctx.log.info(f"[{ctx.stage_id}] resumed from {latest.name} (step {start})")
    ctx.metrics.truncate_after(start)
    for w in ckpts.warnings:
        ctx.manifest.update(warnings=ckpts.warnings)

    sampler = EpochSampler(len(examples), cfg.batch_size, recipe.seed)
    bar = ctx.progress(cfg.steps, initial=start)
    t_last = time.time()
    for step in range(start, cfg.steps):
        batch = [examples[i] for i in sampler.batch(step)]
        mb = collate(batch, tok.pad_token_id)
        res = learner.step(sft_loss, [mb])
        dt, t_last = time.time() - t_last, time.time()
        ctx.metrics.log(step + 1, loss=res.loss, lr=res.lr, grad_norm=res.grad_norm, **res.metrics,
                        tokens=int(mb["weight"]), samples_seen=(step + 1) * cfg.batch_size,
                        tokens_per_s=mb["weight"] / max(dt, 1e-9))
        bar.update(1, loss=res.loss)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            tmp = ckpts.begin(step + 1)
            learner.save(tmp, {"step": step + 1, "samples_seen": (step + 1) * cfg.batch_size})
            ckpts.commit(tmp, step + 1)

    tmp = ctx.dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    learner.save_pretrained(tmp, tok)
    replace_dir(tmp, ctx.final_dir)
    del learner

    summary: dict = {"steps": cfg.steps, "final_loss": ctx.metrics.rows()[-1]["loss"] if cfg.steps else None}
    before = held_out(ctx, init, tok, test)
    after = held_out(ctx, ctx.final_dir, tok, test)
    for mode in recipe.modes:
        for k in ("accuracy", "reward_mean", "length_mean"):
            summary[f"{k}.{mode}"] = after[mode][k]
            summary[f"start_{k}.{mode}"] = before[mode][k]
        ctx.log.info(f"[{ctx.stage_id}] {mode}: accuracy {before[mode]['accuracy']:.3f} -> "
                     f"{after[mode]['accuracy']:.3f}; e.g. {after[mode]['example'][:120]!r}")
    ctx.manifest.update(eval={"start": before, "final": after})
    return summary
