"""Stage ``sft.<domain>``: supervised fine-tuning on the domain's demonstrations in every reasoning mode.

Assistant-only loss on chat-formatted demonstrations; metrics per step to ``metrics.jsonl``; checkpoints every
``save_every`` steps (resumed exactly after a kill); at the end ``final/`` (Hugging Face format) and its held-out
rows on the domain's cells.

    pipeline run recipes/think_max.yaml --only sft.math
"""
from __future__ import annotations

from rewards.tasks import load_tasks
from train.data import sft_examples
from train.evaluate import summary_of
from train.sft import train_sft


def run(ctx) -> dict:
    from transformers import AutoTokenizer

    cfg = ctx.config                                        # specialists.config.SFTStage
    sft = cfg.sft
    init = ctx.dep(sft.init_from)
    tok = AutoTokenizer.from_pretrained(str(init))
    train = load_tasks(cfg.domain, "train", cfg.task.n_train, cfg.seed, cfg.task.model_dump())
    examples = sft_examples(tok, train, cfg.modes, sft.max_len)
    ctx.log.info(f"[{ctx.stage_id}] {len(examples)} examples from {len(train)} tasks x {len(cfg.modes)} modes")

    train_sft(ctx, init, cfg.learner, examples, steps=sft.steps, batch_size=sft.batch_size, seed=cfg.seed,
              save_every=sft.save_every, keep=sft.keep_checkpoints, tok=tok)
    rows = ctx.evaluate([(cfg.domain, m) for m in cfg.modes])
    final = ctx.metrics.rows()[-1]["loss"] if sft.steps else None
    return {"steps": sft.steps, "final_loss": final, **summary_of(rows)}
