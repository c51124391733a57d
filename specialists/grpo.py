"""Stage ``grpo.<domain>.<mode>``: a GRPO specialist (teacher) in one reasoning mode, from ``sft.<domain>``.

One step: sample prompts -> G completions each from the engine (FP4 weights when ``engine.fp4``) in the stage's
mode -> verifier + the mode's length shaping -> group-relative advantages -> the clipped surrogate with DeepSeek's
stabilizers (unbiased KL, off-policy sequence masking, Keep Sampling Mask, Keep Routing) over ``ppo_epochs`` x
``minibatches`` optimizer steps (so π_old ≠ π_θ) -> weight sync to the engine. Resumes exactly from its checkpoints.

    pipeline run recipes/think_max.yaml --only grpo.math.think_max
"""
from __future__ import annotations

import random
import time

import torch

from core.where import device as ray_device
from rewards.reward_errors import check_reward_errors
from rewards.tasks import load_tasks
from rollout.engine import SamplingParams
from rollout.engines import describe, rollout_engine
from train.evaluate import summary_of
from train.ranks import stage_learner

from .algos import ADVANTAGES, LOSS_AGGREGATIONS, asymmetric, entropy, masked_logprobs, policy_loss, token_entropy
from .rollouts import GRPOBatch, Rollouts, by_minibatch, collect, to_minibatches
from .routing import RouteReplay


def run(ctx) -> dict:
    from transformers import AutoTokenizer

    cfg = ctx.config                                        # specialists.config.GRPOStage
    g, s = cfg.grpo, cfg.grpo.sampling
    init = ctx.dep(g.init_from)
    tok = AutoTokenizer.from_pretrained(str(init))
    train = load_tasks(cfg.domain, "train", cfg.task.n_train, cfg.seed, cfg.task.model_dump())
    device = ray_device()     # rank 0's device: the stage's first GPU (ray.get_gpu_ids), or the CPU
    ref = reference_model(init, device) if g.kl_coef > 0 else None       # both before the learner: under ZeRO-3
    engine = rollout_engine(g.engine, init, tok, ctx.services.get("fleet"), ctx.stage_id, device)  # (partitioned)
    ctx.manifest.update(rollout={**describe(engine), "qat": cfg.learner.qat})
    learner = stage_learner(ctx, init, cfg.learner, g.steps * g.ppo_epochs * g.minibatches, seed=cfg.seed)
    routes = RouteReplay.of(learner.unwrapped) if g.keep_routing else None
    loop = ctx.train_loop(learner, g.steps, g.save_every, g.keep_checkpoints, show=("reward", "accuracy"))
    engine.load_weights(learner.rollout_state_dict(engine.fp4))
    use_keep = g.keep_sampling_mask and s.truncating
    engine_routes = routes is not None and routes.active and describe(engine).get("routed_experts", True)
    for step in loop:
        t0 = time.time()
        rng = random.Random(f"{cfg.seed}:{ctx.stage_id}:{step}")        # step-determined: exact resume
        batch = rng.sample(train, min(g.prompts_per_step, len(train)))
        params = SamplingParams(n=g.group_size, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                max_tokens=cfg.budget, seed=rng.randrange(2**31), return_sampling_mask=use_keep,
                                return_routed_experts=engine_routes)
        ro = collect(engine, tok, batch, cfg.mode, g.group_size, params, g.shaping, workers=ctx.num_cpus)
        t_roll = time.time() - t0
        check_reward_errors(ro.reward_errors, len(ro.texts), step, g.reward_errors.first_step,   # verifier failures:
                            g.reward_errors.max_fraction, ro.reward_error, ctx.stage_id)     # fail, never train on
        reward_P_G = ro.reward_P_G if cfg.reward_signal else torch.zeros_like(ro.reward_P_G)   # the control: none
        adv = asymmetric(ADVANTAGES[g.advantage](reward_P_G), g.baseline_shift, g.negative_weight)
        # each minibatch (an optimizer step) in one part per rank: data parallel over the step's global batch
        mbs = to_minibatches(ro, adv, g.minibatches, tok.pad_token_id, use_keep, learner.device, learner.ranks,
                             g.micro_batch_seqs)
        mismatch = old_policy(learner, ref, routes, mbs, g, cfg.budget)   # π_old = engine; π_ref; the mismatch
        results = train_steps(learner, make_loss_fn(g, cfg.budget), by_minibatch(mbs), g.ppo_epochs)
        sync_s = engine.load_weights(learner.rollout_state_dict(engine.fp4))
        seen = (step + 1) * len(batch)
        loop.log({"samples_seen": seen}, **step_metrics(ro, results), **mismatch, sync_s=sync_s,
                 rollout_s=t_roll, tokens_per_s=sum(ro.n_tokens) / max(t_roll, 1e-9), step_s=time.time() - t0,
                 samples_seen=seen)
    engine.close()
    ctx.publish(learner.save_pretrained, tok)
    learner.close()
    del learner, ref
    rows = ctx.evaluate([(cfg.domain, cfg.mode)])
    return {"steps": g.steps, **summary_of(rows)}


def reference_model(init, device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(init), dtype=torch.float32).to(device).eval()


def forward_logp(model, mb: GRPOBatch, temperature: float):
    logits = model(input_ids=mb.input_ids_B_L, attention_mask=mb.attention_mask_B_L).logits[:, :-1]
    return logits, masked_logprobs(logits, mb.input_ids_B_L[:, 1:], temperature, mb.keep_ids_B_T_K)


@torch.no_grad()
def old_policy(learner, ref, routes, mbs: list[GRPOBatch], g, budget: int) -> dict:
    """π_old of this batch is the engine's sampling log-prob (DeepSeek-V3.2): the behaviour policy as it ran, FP4
    weights and all, so the off-policy sequence mask also catches train/inference mismatch. The learner's own
    log-probs at the sampling weights (a no-grad forward on every rank, replaying the engine's routes, or recording
    the learner's own when the engine gave none) measure that mismatch; π_ref fills in for the KL term. Returns the
    mismatch metrics (KL(engine ‖ learner) by the k3 estimator on the sampled tokens, mean |Δp| and |Δ log p|)."""
    keep_routing = routes is not None and routes.active
    outs = learner.map(own_logp_fn(g.sampling.temperature, keep_routing), mbs)
    kl = dprob = dlogp = n_tok = 0.0
    for mb, (own, rec) in zip(mbs, outs):
        mb.weight = float(LOSS_AGGREGATIONS[g.loss_agg](mb.mask_B_T, mb.mask_B_T, budget)[1])
        mb.old_logp_B_T = mb.engine_logp_B_T
        if rec is not None:
            mb.routes = rec
        if ref is not None:
            _, mb.ref_logp_B_T = forward_logp(ref, mb, g.sampling.temperature)
        m = mb.mask_B_T
        d = (own - mb.engine_logp_B_T) * m   # log π_learner − log π_engine on sampled tokens (map: on rank 0's device)
        kl += float(((d.exp() - 1 - d) * m).sum())
        dprob += float(((own.exp() - mb.engine_logp_B_T.exp()).abs() * m).sum())
        dlogp += float(d.abs().sum())
        n_tok += float(m.sum())
    n = max(n_tok, 1.0)
    return {"mismatch_kl": kl / n, "mismatch_abs_dprob": dprob / n, "mismatch": dlogp / n}


def own_logp_fn(temperature: float, keep_routing: bool):
    """``fn(model, mb) -> (log π_θ, routes recorded or None)`` for ``learner.map`` (runs on every rank: it
    captures nothing but numbers)."""

    def fn(model, mb):
        rr = RouteReplay.of(model) if keep_routing else None
        if rr is not None and mb.routes is not None:
            with rr.replay(mb.routes):
                return forward_logp(model, mb, temperature)[1], None
        if rr is not None:
            with rr.record() as rec:
                lp = forward_logp(model, mb, temperature)[1]
            return lp, rec
        return forward_logp(model, mb, temperature)[1], None

    return fn


def make_loss_fn(g, budget: int):
    """The GRPO loss for ``learner.step`` (runs on every rank: each replays the routes on its own model)."""
    t = g.sampling.temperature
    keep_routing = g.keep_routing

    def loss_fn(model, mb: GRPOBatch):
        rr = RouteReplay.of(model) if keep_routing and mb.routes is not None else None
        if rr is not None:
            with rr.replay(mb.routes):
                logits, logp = forward_logp(model, mb, t)
        else:
            logits, logp = forward_logp(model, mb, t)
        out = policy_loss(logp, mb.old_logp_B_T, mb.adv_B, mb.mask_B_T, clip_low=g.clip_low, clip_high=g.clip_high,
                          ref_logp_B_T=mb.ref_logp_B_T, kl_coef=g.kl_coef,
                          offpolicy_delta=g.offpolicy_delta if g.offpolicy_mask else None, aggregation=g.loss_agg,
                          max_len=budget, entropy_coef=g.entropy_coef,
                          entropy_B_T=token_entropy(logits, t, mb.keep_ids_B_T_K) if g.entropy_coef else None)
        # a count: Learner.step sums Σ v · weight / W over the step's micro-batches, train_steps multiplies by W
        metrics = {**out.metrics, "masked_seqs": out.metrics["masked_seqs"] / max(mb.weight, 1e-9)}
        return out.loss_sum, {**metrics, "entropy": entropy(logits.detach(), mb.mask_B_T)}

    return loss_fn


def train_steps(learner, loss_fn, steps: list[list[GRPOBatch]], epochs: int) -> list:
    """``epochs`` passes of one optimizer step per minibatch (``steps``: each minibatch's parts, one per rank). The
    step's ``masked_seqs`` back to a count, ``masked_frac`` to the step's share of sequences."""
    results = []
    for _ in range(epochs):
        for parts in steps:
            res = learner.step(loss_fn, parts)
            masked = round(res.metrics["masked_seqs"] * sum(mb.weight for mb in parts), 6)
            res.metrics.update(masked_seqs=masked, masked_frac=masked / max(sum(mb.n_seqs for mb in parts), 1))
            results.append(res)
    return results


def step_metrics(ro: Rollouts, results) -> dict:
    avg = {k: sum(r.metrics[k] for r in results) / len(results) for k in results[0].metrics}
    avg["masked_seqs"] = sum(r.metrics["masked_seqs"] for r in results)   # sequences the off-policy mask dropped
    return dict(reward=float(ro.reward_P_G.mean()), accuracy=float((ro.correct_P_G >= 1).float().mean()),
                correct=float(ro.correct_P_G.mean()), **{f"reward.{k}": v for k, v in ro.components.items()},
                response_length=sum(ro.n_tokens) / len(ro.n_tokens), truncated=sum(ro.truncated) / len(ro.truncated),
                loss=sum(r.loss for r in results) / len(results), grad_norm=results[-1].grad_norm,
                lr=results[-1].lr, reward_errors=ro.reward_errors, **avg)
