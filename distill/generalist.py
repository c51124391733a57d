"""Stage ``generalist``: the student's start -- SFT on the union of every domain's demonstrations, all modes.

Each domain's demonstrations enter the union ``repeats[domain]`` times (by default in the proportions of the
distillation mixture); batch size, length and learner default to the ``sft`` section's, the number of steps to the
SFT specialists' steps together (the same SFT budget). Its ``final/`` is what ``distill`` starts from
(``distill.student_from``), and its held-out rows are the student's start in every results table.

    pipeline run recipes/think_max.yaml --only generalist
"""
from __future__ import annotations

from rewards.tasks import load_tasks
from train.data import sft_examples
from train.evaluate import summary_of
from train.sft import train_sft


def run(ctx) -> dict:
    from transformers import AutoTokenizer

    cfg = ctx.config                                        # distill.config.GeneralistStage
    init = ctx.dep(cfg.init_from)
    tok = AutoTokenizer.from_pretrained(str(init))
    examples = []
    for d, src in cfg.tasks.items():
        tasks = load_tasks(d, "train", src.n_train, cfg.seed, src.model_dump())
        examples += [e for _ in range(cfg.repeats.get(d, 1)) for e in sft_examples(tok, tasks, cfg.modes, cfg.max_len)]
    ctx.log.info(f"[generalist] {len(examples)} examples (repeats {cfg.repeats}); {cfg.steps} steps")

    train_sft(ctx, init, cfg.learner, examples, steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed,
              save_every=cfg.save_every, keep=cfg.keep_checkpoints, tok=tok)
    rows = ctx.evaluate([(d, m) for d in cfg.tasks for m in cfg.modes])
    return {"steps": cfg.steps, "final_loss": ctx.metrics.rows()[-1]["loss"], **summary_of(rows)}
