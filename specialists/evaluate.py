"""Held-out evaluation of one model on one domain in each mode: generate, verify, aggregate.

Used at the end of SFT (and by GRPO and the eval stage): greedy by default. Accuracy is the fraction of
completions the domain's verifier fully accepts (score 1, i.e. exact match of the answer, all tests passing, the
reference final state, all constraints met); ``reward_mean`` the verifier's mean score.
"""
from __future__ import annotations

import time

from rewards.base import score_batch
from rewards.tasks import system_message
from rollout.agent_loop import run_episodes, transcript
from rollout.encoding import encode_prompt
from rollout.engine import SamplingParams


def prompt_messages(sample: dict) -> list[dict]:
    sys = system_message(sample["domain"])
    return ([{"role": "system", "content": sys}] if sys else []) + [{"role": "user", "content": sample["prompt"]}]


def generate_texts(engine, tok, samples: list[dict], mode: str, params: SamplingParams) -> tuple[list[str], list[int]]:
    """(completion texts, model-token counts), one per sample; the agent domain runs full tool episodes."""
    prompts = [encode_prompt(tok, prompt_messages(s), mode) for s in samples]
    if samples and samples[0]["domain"] == "agent":
        eps = run_episodes(engine, tok, prompts, samples, mode, params)
        return [transcript(tok, e) for e in eps], [e.n_model_tokens for e in eps]
    outs = engine.generate(prompts, params)
    return [o[0].text for o in outs], [len(o[0].token_ids) for o in outs]


def evaluate(engine, tok, domain: str, samples: list[dict], modes: list[str], max_tokens: int,
             temperature: float = 0.0, workers: int | None = None, samples_per_prompt: int = 1,
             top_p: float = 1.0, top_k: int = 0, seed: int = 0) -> dict[str, dict]:
    """{mode: {accuracy, reward_mean, length_mean, format_ok, n, seconds}}; greedy when ``temperature == 0``,
    else the mean over ``samples_per_prompt`` sampled completions per prompt."""
    out = {}
    samples = [s for s in samples for _ in range(samples_per_prompt if temperature > 0 else 1)]
    for mode in modes:
        t0 = time.time()
        params = SamplingParams(n=1, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                                seed=seed)
        texts, lengths = generate_texts(engine, tok, samples, mode, params)
        verdicts = score_batch(domain, texts, samples, mode, workers=workers)
        n = len(samples)
        out[mode] = {"accuracy": sum(v.score >= 1.0 for v in verdicts) / n,
                     "reward_mean": sum(v.score for v in verdicts) / n,
                     "length_mean": sum(lengths) / n,
                     "format_ok": sum(bool(v.details.get("format_ok")) for v in verdicts) / n,
                     "n": n, "seconds": round(time.time() - t0, 2),
                     "example": texts[0][:300] if texts else ""}
    return out
