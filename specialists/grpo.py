"""Stage ``grpo.<domain>.<mode>``: a GRPO specialist (teacher) in one reasoning mode, from ``sft.<domain>``.

One step: sample prompts → G completions each from the engine (FP4 weights when ``engine.fp4``) in the stage's
mode → verifier + the mode's length shaping → group-relative advantages → the clipped surrogate with DeepSeek's
stabilizers (unbiased KL, off-policy sequence masking, Keep Sampling Mask, Keep Routing) over ``ppo_epochs`` x
``minibatches`` optimizer steps (so π_old ≠ π_θ) → weight sync to the engine. Resumes exactly from its checkpoints.

    pipeline run recipes/think_max.yaml --only grpo.math.think_max
"""
from __future__ import annotations

import random
import shutil
import time

import torch

from pipeline.core.registry import register_stage
from pipeline.core.rundir import replace_dir
from rewards.tasks import load_tasks
from rollout.engine import SamplingParams, make_engine

from .algos import (ADVANTAGES, LOSS_AGGREGATIONS, asymmetric, entropy, masked_logprobs, policy_loss,
                    token_entropy)
from .evaluate import evaluate
from .learner import Learner
from .rollouts import collect, to_minibatches
from .routing import RouteReplay


def _engine(cfg, model_dir, tok):
    if cfg.engine.kind == "hf":
        return make_engine("hf", model_path=str(model_dir), tokenizer=tok, max_batch=cfg.engine.max_batch)
    return make_engine("vllm", model_path=str(model_dir), gpu_memory_utilization=cfg.engine.gpu_memory_utilization,
                       quantized=cfg.engine.fp4)


def _sync(engine, learner, fp4: bool) -> float:
    if fp4:
        from rollout.fp4 import quantized_state_dict

        return engine.load_weights(quantized_state_dict(learner.unwrapped))
    return engine.load_weights(learner.state_dict())


def _forward_logp(model, mb, temperature, keep):
    logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits[:, :-1]
    return logits, masked_logprobs(logits, mb["input_ids"][:, 1:], temperature, keep)


@register_stage("grpo")
def run(ctx) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, recipe, domain, mode = ctx.config, ctx.recipe, ctx.domain, ctx.mode
    init = ctx.dep(cfg.init_from)
    tok = AutoTokenizer.from_pretrained(str(init))
    shaping = cfg.shaping_config()
    budget = shaping.for_mode(mode).l_max
    src = recipe.task_source(domain)
    train = load_tasks(domain, "train", src.n_train, recipe.seed, src.model_dump())
    test = load_tasks(domain, "test", cfg.n_eval or src.n_eval, recipe.seed, src.model_dump())
    lcfg = recipe.learner_for(cfg.learner)
    learner = Learner(init, lcfg, cfg.steps * cfg.ppo_epochs * cfg.minibatches, seed=recipe.seed)
    ref = None
    if cfg.kl_coef > 0:
        ref = AutoModelForCausalLM.from_pretrained(str(init), dtype=torch.float32).eval()
    routes = RouteReplay(learner.unwrapped) if cfg.keep_routing else None
    engine = _engine(cfg, init, tok)
    fp4 = cfg.engine.fp4

    ckpts = ctx.checkpoints(cfg.keep_checkpoints)
    start, latest = 0, ckpts.latest()
    if latest is not None:
        start = learner.load(latest)["step"]
        ctx.log.info(f"[{ctx.stage_id}] resumed from {latest.name} (step {start})")
    if ckpts.warnings:                      # also when every checkpoint was corrupt (a restart from step 0)
        ctx.manifest.update(warnings=ckpts.warnings)
    ctx.metrics.truncate_after(start)
    _sync(engine, learner, fp4)

    s = cfg.sampling
    truncating = s.top_k > 0 or s.top_p < 1.0
    agg = cfg.loss_agg
    bar = ctx.progress(cfg.steps, initial=start)
    for step in range(start, cfg.steps):
        t0 = time.time()
        rng = random.Random(f"{recipe.seed}:{ctx.stage_id}:{step}")        # step-determined: exact resume
        batch = rng.sample(train, min(cfg.prompts_per_step, len(train)))
        params = SamplingParams(n=cfg.group_size, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                max_tokens=budget, seed=rng.randrange(2**31),
                                return_sampling_mask=cfg.keep_sampling_mask and truncating)
        ro = collect(engine, tok, batch, mode, cfg.group_size, params, shaping, workers=ctx.num_cpus)
        t_roll = time.time() - t0
        adv = asymmetric(ADVANTAGES[cfg.advantage](ro.reward_P_G), cfg.baseline_shift, cfg.negative_weight)
        mbs = to_minibatches(ro, adv, cfg.minibatches, tok.pad_token_id, learner.unwrapped.config.vocab_size,
                             use_keep=cfg.keep_sampling_mask and truncating)
        # π_old (and π_ref, and the routes to keep) from the weights that sampled this batch
        learner.model.eval()
        mism, n_tok = 0.0, 0.0
        with torch.no_grad():
            for mb in mbs:
                mb["weight"] = float(LOSS_AGGREGATIONS[agg](mb["mask"], mb["mask"], budget)[1])
                if routes is not None and routes.active:
                    with routes.record() as rec:
                        _, mb["old_logp"] = _forward_logp(learner.model, mb, s.temperature, mb["keep"])
                    mb["routes"] = rec
                else:
                    _, mb["old_logp"] = _forward_logp(learner.model, mb, s.temperature, mb["keep"])
                if ref is not None:
                    _, mb["ref_logp"] = _forward_logp(ref, mb, s.temperature, mb["keep"])
                mism += float(((mb["old_logp"] - mb["engine_logp"]).abs() * mb["mask"]).sum())
                n_tok += float(mb["mask"].sum())

        def loss_fn(model, mb):
            if "routes" in mb:
                with routes.replay(mb["routes"]):
                    logits, logp = _forward_logp(model, mb, s.temperature, mb["keep"])
            else:
                logits, logp = _forward_logp(model, mb, s.temperature, mb["keep"])
            out = policy_loss(logp, mb["old_logp"], mb["adv"], mb["mask"], clip_low=cfg.clip_low,
                              clip_high=cfg.clip_high, ref_logp_B_T=mb.get("ref_logp"), kl_coef=cfg.kl_coef,
                              offpolicy_delta=cfg.offpolicy_delta if cfg.offpolicy_mask else None,
                              aggregation=agg, max_len=budget, entropy_coef=cfg.entropy_coef,
                              entropy_B_T=(token_entropy(logits, s.temperature, mb["keep"])
                                           if cfg.entropy_coef else None))
            return out.loss_sum, {**out.metrics, "entropy": entropy(logits.detach(), mb["mask"])}

        results = [learner.step(loss_fn, [mb]) for _ in range(cfg.ppo_epochs) for mb in mbs]
        sync_s = _sync(engine, learner, fp4)
        avg = {k: sum(r.metrics[k] for r in results) / len(results) for k in results[0].metrics}
        n_gen = sum(ro.n_tokens)
        row = dict(reward=float(ro.reward_P_G.mean()), accuracy=float((ro.correct_P_G >= 1).float().mean()),
                   correct=float(ro.correct_P_G.mean()),
                   **{f"reward.{k}": v for k, v in ro.components.items()},
                   response_length=n_gen / len(ro.n_tokens), truncated=sum(ro.truncated) / len(ro.truncated),
                   loss=sum(r.loss for r in results) / len(results), grad_norm=results[-1].grad_norm,
                   lr=results[-1].lr, mismatch=mism / max(n_tok, 1), sync_s=sync_s, rollout_s=t_roll,
                   tokens_per_s=n_gen / max(t_roll, 1e-9), step_s=time.time() - t0,
                   samples_seen=(step + 1) * len(batch), **avg)
        ctx.metrics.log(step + 1, **row)
        bar.update(1, reward=row["reward"], acc=row["accuracy"], len=row["response_length"])
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            tmp = ckpts.begin(step + 1)
            learner.save(tmp, {"step": step + 1, "samples_seen": row["samples_seen"]})
            ckpts.commit(tmp, step + 1)

    tmp = ctx.dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    learner.save_pretrained(tmp, tok)
    replace_dir(tmp, ctx.final_dir)
    engine.close()

    summary = {"steps": cfg.steps}
    for name, folder in (("start_", init), ("", ctx.final_dir)):
        ev_engine = make_engine("hf", model_path=str(folder), tokenizer=tok)
        sampled = evaluate(ev_engine, tok, domain, test, [mode], budget, temperature=s.temperature, top_p=s.top_p,
                           top_k=s.top_k, samples_per_prompt=cfg.eval_samples, seed=recipe.seed,
                           workers=ctx.num_cpus)[mode]
        greedy = evaluate(ev_engine, tok, domain, test, [mode], budget, workers=ctx.num_cpus)[mode]
        for k in ("reward_mean", "accuracy", "length_mean", "format_ok"):
            summary[f"{name}{k}"] = sampled[k]
            summary[f"{name}{k}_greedy"] = greedy[k]
    ctx.log.info(f"[{ctx.stage_id}] held-out reward {summary['start_reward_mean']:.3f} -> "
                 f"{summary['reward_mean']:.3f} (greedy {summary['start_reward_mean_greedy']:.3f} -> "
                 f"{summary['reward_mean_greedy']:.3f}), length {summary['start_length_mean']:.1f} -> "
                 f"{summary['length_mean']:.1f}")
    return summary
