"""Turn a GRPO step's prompts into scored groups and typed training micro-batches.

``collect`` samples G completions per prompt through the engine (full tool episodes for the agent domain), scores
them with the domain's verifier plus the mode's shaping, and returns a ``Rollouts`` record. ``to_minibatches`` pads
them into ``GRPOBatch`` records. Shapes: ``P`` prompts, ``G`` group size, ``B`` sequences of a micro-batch, ``L``
padded sequence length, ``T = L - 1`` next-token positions (position t describes token t + 1), ``V`` vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rewards.base import score_batch
from rewards.verdict import count_unscored
from rollout.agent_loop import run_episodes, transcript
from rollout.encoding import encode_prompt
from rollout.engine import SamplingParams
from train.evaluate import prompt_messages

from .routing import routes_from_sequences


@dataclass
class Rollouts:
    samples: list[dict]               # P task samples
    seqs: list[list[int]]             # P*G prompt+completion ids, group-major
    prompt_lens: list[int]            # P*G
    model_mask: list[list[int]]       # P*G, per completion token: 1 = written by the model
    engine_logp: list[list[float]]    # P*G, one per model token
    keep: list[list]                  # P*G, per model token: allowed ids (Keep Sampling Mask) or None
    texts: list[str]                  # P*G completion texts (what the verifier saw)
    n_tokens: list[int]               # P*G model tokens
    routes: list                      # P*G, the engine's routed experts per sequence ([len - 1, layers, k]) or None
    correct_P_G: torch.Tensor         # verifier scores in [0, 1]
    reward_P_G: torch.Tensor          # shaped rewards
    components: dict                  # name -> mean over the batch
    truncated: list[bool]
    reward_errors: int = 0            # verdicts that are verifier failures (scored 0 without a judgement)
    reward_error: str | None = None   # the first one's reason


@dataclass
class GRPOBatch:
    """One learner micro-batch of whole sequences."""
    input_ids_B_L: torch.Tensor
    attention_mask_B_L: torch.Tensor
    mask_B_T: torch.Tensor            # 1 where token t + 1 was written by the model
    engine_logp_B_T: torch.Tensor     # the sampler's log-prob of token t + 1 (0 elsewhere)
    keep_ids_B_T_K: torch.Tensor | None  # Keep Sampling Mask: per position the kept ids, -1 padded (K = largest set)
    adv_B: torch.Tensor               # the sequence's advantage
    n_seqs: int
    weight: float = 0.0               # the loss aggregation's denominator (Learner.step divides by the sum)
    old_logp_B_T: torch.Tensor | None = None   # π_old (filled in before the optimizer steps)
    ref_logp_B_T: torch.Tensor | None = None   # π_ref (KL term)
    routes: list | None = None                 # Keep Routing: experts per router call, recorded under π_old
    minibatch: int = 0                         # the optimizer step (minibatch) this micro-batch is a part of
    extra: dict = field(default_factory=dict)


def collect(engine, tok, samples: list[dict], mode: str, G: int, params: SamplingParams, shaping,
            workers: int) -> Rollouts:
    domain = samples[0]["domain"]
    prompts = [encode_prompt(tok, prompt_messages(s, mode), mode) for s in samples]
    seqs, plens, masks, logps, keeps, texts, ntoks, trunc, routes = [], [], [], [], [], [], [], [], []
    if domain == "agent":
        rep_prompts = [p for p in prompts for _ in range(G)]
        rep_samples = [s for s in samples for _ in range(G)]
        eps = run_episodes(engine, tok, rep_prompts, rep_samples, mode, SamplingParams(**{**params.__dict__, "n": 1}))
        for p, e in zip(rep_prompts, eps):
            seqs.append(p + e.ids), plens.append(len(p)), masks.append(e.loss_mask)
            logps.append(e.logprobs), keeps.append(e.sampling_mask), texts.append(transcript(tok, e))
            ntoks.append(e.n_model_tokens), trunc.append(e.finish_reason == "length"), routes.append(e.routes)
    else:
        for p, group in zip(prompts, engine.generate(prompts, params)):
            for c in group:
                seqs.append(p + c.token_ids), plens.append(len(p)), masks.append([1] * len(c.token_ids))
                logps.append(c.logprobs), keeps.append(c.sampling_mask or [None] * len(c.token_ids))
                texts.append(c.text), ntoks.append(len(c.token_ids)), trunc.append(c.finish_reason == "length")
                routes.append(c.routed_experts)
    rep_samples = [s for s in samples for _ in range(G)]
    verdicts = score_batch(domain, texts, rep_samples, mode, workers=workers)
    correct = torch.tensor([v.score for v in verdicts]).view(len(samples), G)
    # an agent transcript is several turns: its format is the verifier's per-turn check, not one think block
    comps = [shaping.components(v.score, t, n, mode, v.details.get("format_ok") if domain == "agent" else None)
             for v, t, n in zip(verdicts, texts, ntoks)]
    reward = torch.tensor([sum(shaping.weights[k] * c[k] for k in shaping.weights) for c in comps]).view(len(samples), G)
    mean_comps = {k: sum(c[k] for c in comps) / len(comps) for k in comps[0]}
    n_err, first_err = count_unscored(verdicts)
    return Rollouts(samples, seqs, plens, masks, logps, keeps, texts, ntoks, routes, correct, reward, mean_comps,
                    trunc, n_err, first_err)


def to_minibatches(r: Rollouts, adv_P_G: torch.Tensor, n_mb: int, pad_id: int, use_keep: bool,
                   device=None, ranks: int = 1, max_seqs: int | None = None) -> list[GRPOBatch]:
    """Split the P*G sequences into ``n_mb`` minibatches (whole sequences, fixed order), one optimizer step each, and
    each minibatch into ``ranks`` contiguous parts (sizes differing by at most one; none empty), the learner ranks'
    shares of that step -- or, with ``max_seqs``, into a multiple of ``ranks`` parts of at most ``max_seqs``
    sequences each (gradient accumulation): padded micro-batches on ``device``, in order, each knowing its
    minibatch (``minibatch``). The parts of a minibatch are one step's global batch: ``Learner.step`` normalizes
    by their total weight, so any number of ranks or parts takes the same step (``by_minibatch`` groups them)."""
    adv = adv_P_G.flatten()
    order = list(range(len(r.seqs)))
    size = -(-len(order) // n_mb)
    parts = []
    for k, start in enumerate(range(0, len(order), size)):
        chunk = order[start:start + size]
        n_parts = ranks * (-(-len(chunk) // (ranks * max_seqs)) if max_seqs else 1)
        q, rem = divmod(len(chunk), n_parts)
        at = 0
        for i in range(n_parts):
            n = q + (1 if i < rem else 0)
            if n:
                parts.append((k, chunk[at:at + n]))
            at += n
    out = []
    for k, idx in parts:
        L = max(len(r.seqs[i]) for i in idx)
        B = len(idx)
        ids = torch.full((B, L), pad_id, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        mask = torch.zeros((B, L - 1))
        elogp = torch.zeros((B, L - 1))
        K = max((len(a) for i in idx for a in r.keep[i] if a is not None), default=0) if use_keep else 0
        keep = torch.full((B, L - 1, K), -1, dtype=torch.long) if K else None
        for b, i in enumerate(idx):
            s, pl = r.seqs[i], r.prompt_lens[i]
            ids[b, :len(s)] = torch.tensor(s)
            attn[b, :len(s)] = 1
            m = torch.tensor(r.model_mask[i], dtype=torch.float)
            mask[b, pl - 1:pl - 1 + len(m)] = m
            pos = (torch.nonzero(m).flatten() + pl - 1).tolist()
            elogp[b, pos] = torch.tensor(r.engine_logp[i][:len(pos)])
            if keep is not None:
                for p, allowed in zip(pos, r.keep[i]):
                    if allowed is not None:
                        keep[b, p, :len(allowed)] = torch.tensor(allowed)
        mb = GRPOBatch(ids, attn, mask, elogp, keep, adv[idx], n_seqs=B, minibatch=k)
        if all(r.routes[i] is not None for i in idx):       # Keep Routing: the experts the engine used
            mb.routes = [t.to(device) if device is not None else t
                         for t in routes_from_sequences([r.routes[i] for i in idx], L)]
        if device is not None:
            for name in ("input_ids_B_L", "attention_mask_B_L", "mask_B_T", "engine_logp_B_T", "keep_ids_B_T_K", "adv_B"):
                t = getattr(mb, name)
                if t is not None:
                    setattr(mb, name, t.to(device))
        out.append(mb)
    return out


def by_minibatch(mbs: list[GRPOBatch]) -> list[list[GRPOBatch]]:
    """``to_minibatches``' micro-batches grouped by minibatch: one list per optimizer step, in order."""
    steps: dict[int, list[GRPOBatch]] = {}
    for mb in mbs:
        steps.setdefault(mb.minibatch, []).append(mb)
    return [steps[k] for k in sorted(steps)]
