"""Stage ``distill``: multi-teacher on-policy distillation (DeepSeek-V4 OPD) into one student.

The student starts from ``student_from`` (by default the ``generalist`` stage). Each step draws ``prompts_per_step``
prompts across domain x mode (``mixture``), lets the student generate its own trajectories (MXFP4 weights when
``engine.fp4``; agent tasks as full tool episodes), sends each trajectory to its teacher(s) by (domain, mode), and
minimises the mean over completion tokens of ``Σ_teachers w · KL(student ‖ teacher)`` over the full vocabulary, from
the teachers' last hidden states and heads (``distill.kl``). Checkpoints every ``save_every`` steps resume exactly;
at the end ``final/`` and its held-out rows on every domain x mode. See docs/distillation.md.

    pipeline run recipes/think_max.yaml --only distill
"""
from __future__ import annotations

import resource
import time

import torch

from core.rundir import read_json
from core.where import device as ray_device
from rewards.tasks import load_tasks
from rollout.engines import describe, rollout_engine
from train.evaluate import summary_of
from train.ranks import stage_learner

from .kl import teacher_payload_bytes
from .loss import kl_means, make_loss_fn, micro_batches
from .rollouts import generate_trajectories
from .routing import draw_prompts, route, route_table, teachers_of
from .teachers import TeacherPool, check_teachers


def run(ctx) -> dict:
    from transformers import AutoTokenizer

    cfg = ctx.config                                        # distill.config.DistillStage
    d = cfg.distill
    init = ctx.dep(cfg.student_from)
    table = route_table(cfg.teachers, ctx.dep)
    check_teachers(table, init)                             # missing / wrong-vocabulary teachers: fail first
    tok = AutoTokenizer.from_pretrained(str(init))
    tasks = {dom: load_tasks(dom, "train", src.n_train, cfg.seed, src.model_dump()) for dom, src in cfg.tasks.items()}
    ctx.log.info(f"[distill] student {cfg.student_from}; {len(teachers_of(table))} teachers for {len(table)} routes: "
                 + ", ".join(f"{k}<-{'+'.join(t.name for t, _ in r)}" for k, r in table.items()))
    ctx.manifest.update(student_from=cfg.student_from)

    device = ray_device()     # rank 0's: the stage's first GPU (ray.get_gpu_ids), or the CPU
    engine = rollout_engine(d.engine, init, tok, ctx.services.get("fleet"), ctx.stage_id, device)  # before ZeRO-3
    ctx.manifest.update(rollout={**describe(engine), "qat": cfg.learner.qat})
    learner = stage_learner(ctx, init, cfg.learner, d.steps, seed=cfg.seed)
    loop = ctx.train_loop(learner, d.steps, d.save_every, d.keep_checkpoints)
    engine.load_weights(learner.rollout_state_dict(engine.fp4))
    pool = TeacherPool(teachers_of(table), d.teacher_memory_gb, threads=1, payload=d.payload,   # one thread each:
                       placement=teacher_placement(ctx),                                        # they share cores
                       qat=getattr(cfg, "teacher_qat", {}))   # (a spec pickled before the field: served as stored)
    try:
        for step in loop:
            t0 = time.perf_counter()
            draws = draw_prompts(cfg.weights, {k: len(v) for k, v in tasks.items()}, d.prompts_per_step,
                                 cfg.seed, step)
            trajs = generate_trajectories(engine, tok, draws, tasks, d.samples_per_prompt, d.sampling,
                                          cfg.max_tokens, cfg.seed, step)
            t_gen = time.perf_counter()
            requests: dict[str, tuple[list, list]] = {}
            for t in trajs:
                for teacher, _ in route(table, t.draw.domain, t.draw.mode):
                    seqs, pos = requests.setdefault(teacher.name, ([], []))
                    seqs.append(t.ids)
                    pos.append(t.positions)
            payloads = pool.run(requests)
            t_teach = time.perf_counter()
            loss_fn = make_loss_fn(pool.heads, d.payload, d.chunk_size, d.temperature)
            mbs = micro_batches(trajs, lambda t: route(table, t.draw.domain, t.draw.mode), payloads,
                                tok.pad_token_id, device=learner.device, ranks=learner.ranks)   # >= 1 per rank
            res = learner.step(loss_fn, mbs)
            t_train = time.perf_counter()
            sync_s = engine.load_weights(learner.rollout_state_dict(engine.fp4))
            loop.log(loss=res.loss, lr=res.lr, grad_norm=res.grad_norm, **kl_means(res.metrics),
                     **step_metrics(trajs, requests, payloads, pool, learner),
                     gen_s=t_gen - t0, teacher_s=t_teach - t_gen, train_s=t_train - t_teach, sync_s=sync_s,
                     tokens_per_s=sum(t.n_tokens for t in trajs) / max(t_gen - t0, 1e-9),   # rollout throughput
                     step_s=time.perf_counter() - t0)
    finally:
        pool.close()
    engine.close()
    ctx.publish(learner.save_pretrained, tok)
    learner.close()
    del learner, engine
    steps = ctx.metrics.rows()
    compute = {"student_tokens": sum(r["tokens"] for r in steps),          # generated by and trained on
               "teacher_tokens": sum(r["teacher_tokens"] for r in steps)}  # graded by the teachers (forwards)
    ctx.manifest.update(compute=compute)          # what control.seqkd is matched to
    rows = ctx.evaluate([(dom, m) for dom in cfg.domains for m in cfg.modes])
    losses = [r["loss"] for r in steps]
    return {"steps": d.steps, "student_from": cfg.student_from, "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None, **{f"compute.{k}": v for k, v in compute.items()},
            **summary_of(rows), **teacher_rewards(ctx, table)}


def teacher_placement(ctx) -> dict | None:
    """Where the teacher actors go: their bundles of the stage's placement group and their GPU share."""
    placement = (ctx.services or {}).get("placement") or {}
    layout = placement.get("layout")
    if layout is None or placement.get("pg") is None:
        return None
    return {"pg": placement["pg"], "bundles": list(layout.teacher_bundles), "num_gpus": layout.teacher_gpus}


def step_metrics(trajs, requests, payloads, pool, learner) -> dict:
    n_tok = sum(t.n_tokens for t in trajs)
    graded = sum(len(p) for _, ps in requests.values() for p in ps)
    routed = sum(len(s) for s, _ in requests.values()) or 1
    model = learner.unwrapped
    return dict(tokens=n_tok, sequences=len(trajs),
                payload_bytes_per_token=sum(x.numel() * x.element_size() for v in payloads.values() for x in v)
                / max(graded, 1),
                logits_bytes_per_token=teacher_payload_bytes(1, model.config.hidden_size,   # V: the config's (under
                                                             model.config.get_text_config().vocab_size,   # ZeRO-3
                                                             "logits"),   # the head weight has 0 elements here)
                teachers_per_seq=routed / max(len(trajs), 1), resident_teachers=len(pool.actors),
                teacher_rss_gb=pool.resident_bytes() / 2**30, teacher_loads=pool.loads,
                teacher_evictions=pool.evictions, student_tokens=n_tok, teacher_tokens=graded,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def teacher_rewards(ctx, table) -> dict[str, float]:
    """The teachers' own held-out reward per domain x mode, from their stage manifests (first teacher per route)."""
    out = {}
    for key, routes in table.items():
        t = routes[0][0]
        if t.name in ctx.deps:
            rows = (read_json(ctx.dep(t.name).parent / "manifest.json", {}) or {}).get("eval_rows") or []
            dom, mode = key.split(".")
            for r in rows:
                if r["metric"] == "reward_mean" and (r["domain"], r["mode"]) == (dom, mode):
                    out[f"teacher_reward_mean.{key}"] = r["value"]
    return out
