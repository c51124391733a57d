"""Stage ``distill``: multi-teacher on-policy distillation (DeepSeek-V4 OPD) into one student.

Each step draws ``prompts_per_step`` prompts across domain x mode (``mixture``), lets the student generate its own
trajectories (the ``hf`` engine, with MXFP4 weights when ``engine.fp4``; agent tasks as full tool episodes), sends
each trajectory to its teacher(s) by (domain, mode), and minimises the mean over completion tokens of
``Σ_teachers w · KL(student ‖ teacher)`` over the full vocabulary, from the teachers' last hidden states and heads
(``distill.kl``). Checkpoints every ``save_every`` steps resume exactly; at the end ``final/`` and the held-out
reward per domain x mode, for the start model and the student. See docs/distillation.md.

    pipeline run recipes/think_max.yaml --only distill
"""
from __future__ import annotations

import resource
import shutil
import time

from pipeline.core.registry import register_stage
from pipeline.core.rundir import read_json, replace_dir
from rewards.tasks import load_tasks
from rollout.hf_engine import HFEngine
from specialists.evaluate import evaluate
from specialists.learner import Learner

from .kl import teacher_payload_bytes
from .loss import kl_means, make_loss_fn, micro_batches
from .rollouts import generate_trajectories
from .routing import domain_repeats, draw_prompts, mixture_weights, route, route_table, teachers_of
from .teachers import TeacherPool, check_teachers
from .warmup import warm_start


def max_tokens_per_mode(recipe, cfg) -> dict[str, int]:
    """``distill.max_tokens``, else the GRPO shaping budget, else SFT's eval budget, else 128."""
    out = {}
    for m in recipe.modes:
        if m in cfg.max_tokens:
            out[m] = cfg.max_tokens[m]
        elif recipe.grpo is not None:
            out[m] = recipe.grpo.shaping_config().for_mode(m).l_max
        else:
            out[m] = recipe.sft.eval_max_tokens if recipe.sft is not None else 128
    return out


def rollout_weights(learner, fp4: bool) -> dict:
    """What the engine computes with: the learner's weights, MXFP4-dequantized on the expert targets when fp4."""
    if not fp4:
        return learner.state_dict()
    from rollout.fp4 import quantized_state_dict

    return quantized_state_dict(learner.unwrapped)


def held_out(ctx, model, tok, max_tokens) -> dict[str, dict]:
    """``{"domain.mode": metrics}``: greedy held-out evaluation in every domain x mode of a model folder (or an
    engine)."""
    recipe, out = ctx.recipe, {}
    engine = model if hasattr(model, "generate") else HFEngine(model_path=str(model), tokenizer=tok)
    for d in recipe.domains:
        src = recipe.task_source(d)
        test = load_tasks(d, "test", ctx.config.n_eval or src.n_eval, recipe.seed, src.model_dump())
        for m in recipe.modes:
            out[f"{d}.{m}"] = evaluate(engine, tok, d, test, [m], max_tokens[m], workers=ctx.num_cpus)[m]
    return out


def teacher_rewards(ctx, table) -> dict[str, float]:
    """The teachers' own held-out reward per domain x mode, from their stage manifests (first teacher per route)."""
    out = {}
    for key, routes in table.items():
        t = routes[0][0]
        if t.name in ctx.deps:
            metrics = (read_json(ctx.dep(t.name).parent / "manifest.json", {}) or {}).get("metrics", {})
            mode = key.split(".")[1]
            val = metrics.get(f"reward_mean.{mode}", metrics.get("reward_mean"))
            if val is not None:
                out[f"teacher_reward_mean.{key}"] = val
    return out


@register_stage("distill")
def run(ctx) -> dict:
    from transformers import AutoTokenizer

    cfg, recipe = ctx.config, ctx.recipe
    init = ctx.dep(cfg.student_from)
    table = route_table(recipe, ctx.dep)
    teachers = teachers_of(table)
    check_teachers(table, init)                             # missing / wrong-vocabulary teachers: fail first
    weights = mixture_weights(cfg, recipe.domains, recipe.modes, table)
    if cfg.engine.kind != "hf":
        raise ValueError(f"distill.engine.kind: only 'hf' is supported by the distill stage, got {cfg.engine.kind!r}")
    max_tokens = max_tokens_per_mode(recipe, cfg)
    tok = AutoTokenizer.from_pretrained(str(init))
    tasks = {d: load_tasks(d, "train", recipe.task_source(d).n_train, recipe.seed,
                           recipe.task_source(d).model_dump()) for d in recipe.domains}
    ctx.log.info(f"[distill] student {cfg.student_from}; {len(teachers)} teachers for {len(table)} routes: "
                 + ", ".join(f"{k}<-{'+'.join(t.name for t, _ in r)}" for k, r in table.items()))

    warm, total = cfg.warmup_sft_steps, cfg.warmup_sft_steps + cfg.steps
    ckpts = ctx.checkpoints(cfg.keep_checkpoints)

    def save(learner, step: int, last: bool) -> None:
        if step % cfg.save_every == 0 or last:
            tmp = ckpts.begin(step)
            learner.save(tmp, {"step": step})
            ckpts.commit(tmp, step)

    start_dir = warm_start(ctx, init, tok, tasks, ckpts, save,    # union-SFT start (or ``init`` as it is)
                           domain_repeats(weights, recipe.domains))
    learner = Learner(start_dir, recipe.learner_for(cfg.learner), cfg.steps, seed=recipe.seed)
    start, latest = warm, ckpts.latest()
    if latest is not None and ckpts.step_of(latest) > warm:
        start = learner.load(latest)["step"]
        ctx.log.info(f"[distill] resumed from {latest.name} (step {start})")
    ctx.metrics.truncate_after(start)
    if ckpts.warnings:
        ctx.manifest.update(warnings=ckpts.warnings)

    engine = HFEngine(model_path=str(start_dir), tokenizer=tok, max_batch=cfg.engine.max_batch)
    engine.load_weights(rollout_weights(learner, cfg.engine.fp4))
    pool = TeacherPool(teachers, cfg.teacher_memory_gb, threads=1, payload=cfg.payload)   # many actors share the cores
    hidden = learner.unwrapped.config.hidden_size
    vocab = learner.unwrapped.get_output_embeddings().weight.shape[0]
    bar = ctx.progress(total, initial=start)
    try:
        for step in range(start, total):
            t0 = time.perf_counter()
            draws = draw_prompts(weights, {d: len(v) for d, v in tasks.items()}, cfg.prompts_per_step,
                                 recipe.seed, step)
            trajs = generate_trajectories(engine, tok, draws, tasks, cfg.samples_per_prompt, cfg.sampling,
                                          max_tokens, recipe.seed, step)
            t_gen = time.perf_counter()
            requests: dict[str, tuple[list, list]] = {}
            for t in trajs:
                for teacher, _ in route(table, t.draw.domain, t.draw.mode):
                    seqs, pos = requests.setdefault(teacher.name, ([], []))
                    seqs.append(t.ids)
                    pos.append(t.positions)
            payloads = pool.run(requests)
            t_teach = time.perf_counter()
            n_tok = sum(t.n_tokens for t in trajs)
            payload_bytes = sum(x.numel() * x.element_size() for v in payloads.values() for x in v)
            stats: dict = {}
            loss_fn = make_loss_fn(pool.heads, cfg.payload, cfg.chunk_size, cfg.temperature, stats)
            mbs = micro_batches(trajs, lambda t: route(table, t.draw.domain, t.draw.mode), payloads,
                                tok.pad_token_id)
            res = learner.step(loss_fn, mbs)
            t_train = time.perf_counter()
            sync_s = engine.load_weights(rollout_weights(learner, cfg.engine.fp4))
            dt = time.perf_counter() - t0
            routed = sum(len(s) for s, _ in requests.values()) or 1
            ctx.metrics.log(
                step + 1, phase="distill", loss=res.loss, lr=res.lr, grad_norm=res.grad_norm, **kl_means(stats),
                tokens=n_tok, sequences=len(trajs), tokens_per_s=n_tok / max(dt, 1e-9),
                payload_bytes_per_token=payload_bytes / max(sum(len(p) for _, ps in requests.values()
                                                                for p in ps), 1),
                logits_bytes_per_token=teacher_payload_bytes(1, hidden, vocab, "logits"),
                teachers_per_seq=routed / max(len(trajs), 1), resident_teachers=len(pool.actors),
                teacher_rss_gb=pool.resident_bytes() / 2**30, teacher_loads=pool.loads,
                teacher_evictions=pool.evictions, gen_s=t_gen - t0, teacher_s=t_teach - t_gen,
                train_s=t_train - t_teach, sync_s=sync_s, step_s=dt,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            bar.update(1, loss=res.loss)
            save(learner, step + 1, step + 1 == total)
    finally:
        pool.close()

    tmp = ctx.dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    learner.save_pretrained(tmp, tok)
    replace_dir(tmp, ctx.final_dir)
    del learner, engine

    rows = [r for r in ctx.metrics.rows() if r.get("phase") == "distill"]
    summary: dict = {"steps": cfg.steps, "warmup_sft_steps": warm, "final_loss": rows[-1]["loss"] if rows else None,
                     "first_loss": rows[0]["loss"] if rows else None}
    before = held_out(ctx, init, tok, max_tokens)
    warmed = held_out(ctx, start_dir, tok, max_tokens) if warm else {}   # after the union-SFT start
    after = held_out(ctx, ctx.final_dir, tok, max_tokens)
    for key in after:
        for k in ("accuracy", "reward_mean"):
            summary[f"{k}.{key}"] = after[key][k]
            summary[f"start_{k}.{key}"] = before[key][k]
            if warm:
                summary[f"warm_{k}.{key}"] = warmed[key][k]
    summary.update(teacher_rewards(ctx, table))
    ctx.manifest.update(eval={"start": before, "after_warmup": warmed, "final": after})
    return summary
