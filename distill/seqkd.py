"""Stage ``control.seqkd``: off-policy sequence-level distillation, the compute-matched control for ``distill``.

The student's start (distill's ``student_from``) is fine-tuned, with the SFT loss, on samples its teachers generate
for the prompts distillation draws (same mixture, same seeds, same sampling and budgets: the same prompt stream),
until the teachers have generated as many tokens as they graded during ``distill`` (its manifest's
``compute.teacher_tokens``); then ``distill.steps`` optimizer steps over those samples. So both methods spend the
same teacher tokens and the same number of student updates; ``compute`` in both manifests says so in numbers.

    pipeline run recipes/ablations.yaml --only control.seqkd
"""
from __future__ import annotations

from core.rundir import read_json
from rewards.tasks import load_tasks
from rollout.engines import describe, folder_weights, rollout_engine
from train.data import Example
from train.evaluate import summary_of
from train.sft import train_sft

from .rollouts import generate_trajectories
from .routing import draw_prompts, route, route_table


def run(ctx) -> dict:
    from transformers import AutoTokenizer

    cfg = ctx.config                                        # distill.config.SeqKDStage
    base, d = cfg.base, cfg.base.distill
    init = ctx.dep(base.student_from)
    budget = int(((read_json(ctx.dep("distill").parent / "manifest.json", {}) or {}).get("compute") or {})
                 .get("teacher_tokens") or 0)
    if budget <= 0:
        raise ValueError("control.seqkd: the distill stage's manifest records no compute.teacher_tokens to match")
    tok = AutoTokenizer.from_pretrained(str(init))
    table = route_table(base.teachers, ctx.dep)
    tasks = {dom: load_tasks(dom, "train", src.n_train, base.seed, src.model_dump()) for dom, src in base.tasks.items()}
    examples, generated = teacher_samples(ctx, table, tasks, budget, tok)
    ctx.log.info(f"[control.seqkd] {len(examples)} teacher samples, {generated} teacher tokens (distill graded "
                 f"{budget})")

    train_sft(ctx, init, cfg.learner, examples, steps=d.steps, batch_size=cfg.batch_size, seed=base.seed,
              save_every=cfg.save_every, keep=cfg.keep_checkpoints, tok=tok)
    compute = {"teacher_tokens": generated, "student_tokens": sum(r["tokens"] for r in ctx.metrics.rows()),
               "samples": len(examples), "matched_to": "distill"}
    ctx.manifest.update(compute=compute, student_from=base.student_from)
    rows = ctx.evaluate([(dom, m) for dom in base.domains for m in base.modes])
    return {"steps": d.steps, **{f"compute.{k}": v for k, v in compute.items() if k != "matched_to"},
            **summary_of(rows)}


def teacher_samples(ctx, table, tasks, budget: int, tok) -> tuple[list[Example], int]:
    """Samples from each draw's (first) teacher, in distillation's prompt stream, until ``budget`` teacher tokens.
    The stream is generated ``distill.steps`` steps at a time (one weight push per teacher per chunk) and cut, in
    stream order, where the budget is reached."""
    cfg = ctx.config.base
    d = cfg.distill
    sizes = {k: len(v) for k, v in tasks.items()}
    engine, stream, generated, start = None, [], 0, 0
    try:
        while generated < budget:
            by_teacher: dict[str, list] = {}
            for step in range(start, start + d.steps):
                for dr in draw_prompts(cfg.weights, sizes, d.prompts_per_step, cfg.seed, step):
                    by_teacher.setdefault(route(table, dr.domain, dr.mode)[0][0].folder, []).append((step, dr))
            for folder, draws in by_teacher.items():
                if engine is None:
                    engine = rollout_engine(d.engine, folder, tok, ctx.services.get("fleet"), ctx.stage_id)
                    ctx.manifest.update(rollout=describe(engine))
                else:
                    engine.load_weights(folder_weights(folder, engine.fp4))
                for s in sorted({st for st, _ in draws}):
                    for t in generate_trajectories(engine, tok, [dr for st, dr in draws if st == s], tasks,
                                                   d.samples_per_prompt, d.sampling, cfg.max_tokens, cfg.seed, s):
                        mask = [0] * len(t.ids)
                        for p in t.positions:
                            mask[p + 1] = 1
                        stream.append((s, Example(t.ids, mask, t.draw.mode), t.n_tokens))
                        generated += t.n_tokens
            start += d.steps
            if start > 100 * d.steps:
                raise ValueError("control.seqkd: the teachers' samples never reach distill's teacher tokens")
    finally:
        if engine is not None:
            engine.close()
    stream.sort(key=lambda e: e[0])                          # the prompt stream's order, then cut at the budget
    out, used = [], 0
    for _, ex, n in stream:
        if used >= budget:
            break
        out.append(ex)
        used += n
    return out, used
