"""The verifier interface: ``Verdict``, the ``VERIFIERS`` registry, ``score`` and ``score_batch``.

A verifier is a function ``fn(completion, sample, mode) -> Verdict`` registered for a domain with
``@register_verifier(domain)``. ``completion`` is the text generated after the prompt's prefill (think modes:
reasoning, ``</think>``, answer); trailing special tokens (``<|end|>``, ``<|pad|>``) are ignored.

Where a verifier runs is part of its registration:
  * ``isolation="worker"`` (math, instruct, agent): in a pool of killable worker processes (``rewards.pool``) with
    a hard wall-clock limit and an address-space cap; an overrun kills and replaces the worker.
  * ``isolation="sandbox"`` (code): in the calling process, which hands the program to the sandbox pool
    (``rewards.sandbox``); the batch is spread over the sandbox workers by threads.
``score``/``score_batch`` never raise on model output: every failure is a ``Verdict`` with score 0 and ``error``;
where the verifier itself failed (not the completion) ``details["verifier_error"]`` says why (``Verdict.unscored``).
"""
from __future__ import annotations

import importlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from core.chat import BOS, END, MODES, PAD, split_reasoning

from .pool import get_pool
from .verdict import Verdict, verifier_failure

DOMAINS = ("math", "code", "agent", "instruct")
# the module that registers each domain's verifier (imported lazily, also inside workers)
_MODULES = {"math": "rewards.math_verifier", "code": "rewards.code", "agent": "rewards.agent",
            "instruct": "rewards.ifeval"}
DEFAULT_LIMIT_S = {"math": 4.0, "instruct": 5.0, "agent": 5.0, "code": 10.0}


@dataclass
class _Entry:
    fn: Callable
    isolation: str  # "worker" | "sandbox"


VERIFIERS: dict[str, _Entry] = {}


def register_verifier(domain: str, isolation: str = "worker"):
    if isolation not in ("worker", "sandbox", "inline"):
        raise ValueError(f"unknown isolation {isolation!r}")

    def deco(fn):
        VERIFIERS[domain] = _Entry(fn, isolation)
        return fn
    return deco


def get_verifier(domain: str) -> _Entry:
    if domain not in _MODULES:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    if domain not in VERIFIERS:
        importlib.import_module(_MODULES[domain])
    return VERIFIERS[domain]


# ---------------------------------------------------------------- helpers shared by the verifiers
_TRAILING = (END, PAD, BOS, "<|endoftext|>", "<|eos|>", "</s>")


def clean_completion(text) -> str:
    """Drop trailing special tokens (and whitespace) that a sampler may leave after the answer."""
    if not isinstance(text, str):
        raise TypeError(f"completion must be a string, got {type(text).__name__}")
    t = text.rstrip()
    changed = True
    while changed:
        changed = False
        for tok in _TRAILING:
            if t.endswith(tok):
                t = t[: -len(tok)].rstrip()
                changed = True
    return t


def answer_part(completion: str, mode: str) -> tuple[str, bool, str | None]:
    """(answer text, format_ok, error) — the reasoning stripped per the mode's format."""
    reasoning, answer, ok = split_reasoning(clean_completion(completion), mode)
    if ok:
        return answer, True, None
    why = ("non_think completion contains think tags" if mode == "non_think"
           else "think completion needs exactly one </think> and no <think>")
    return answer, False, f"format: {why}"


def fail(error: str, t0: float | None = None, **details) -> Verdict:
    d = {"error": error, **details}
    if t0 is not None:
        d["time_s"] = time.monotonic() - t0
    return Verdict(0.0, d)


def score_local(domain: str, completion, sample, mode: str) -> Verdict:
    """Run the verifier in this process (what a worker does). Never raises."""
    t0 = time.monotonic()
    try:
        if mode not in MODES:
            return fail(f"unknown mode {mode!r}", t0)
        if not isinstance(sample, dict):
            return fail("sample must be a JSON object", t0)
        v = get_verifier(domain).fn(completion, sample, mode)
    except Exception as e:  # noqa: BLE001 — a verifier bug on odd input: no judgement (counted), never a crash
        return verifier_failure(f"verifier error: {type(e).__name__}: {str(e)[:300]}",
                                time_s=time.monotonic() - t0)
    v.details["time_s"] = time.monotonic() - t0
    return v


# ---------------------------------------------------------------- public entry points
def score(domain: str, completion, sample: dict, mode: str) -> Verdict:
    return score_batch(domain, [completion], [sample], [mode])[0]


def score_batch(domain: str, completions: list, samples: list, modes, workers: int | None = None,
                limit_s: float | None = None) -> list[Verdict]:
    """Score a batch in parallel; ``modes`` is a list or one mode for all. Never raises on model output."""
    n = len(completions)
    if isinstance(modes, str):
        modes = [modes] * n
    if len(samples) != n or len(modes) != n:
        raise ValueError("completions, samples and modes must have the same length")
    entry = get_verifier(domain)
    if n == 0:
        return []
    limit = float(limit_s or DEFAULT_LIMIT_S.get(domain, 5.0))
    if entry.isolation == "worker":
        pool = get_pool(workers)
        jobs = [{"domain": domain, "completion": c, "sample": s, "mode": m}
                for c, s, m in zip(completions, samples, modes)]
        return pool.map(jobs, limit)
    if entry.isolation == "sandbox":
        from .sandbox import get_pool as get_sandbox
        nw = get_sandbox(workers).workers
        with ThreadPoolExecutor(max_workers=min(nw, n)) as ex:
            return list(ex.map(lambda a: score_local(domain, *a), zip(completions, samples, modes)))
    return [score_local(domain, c, s, m) for c, s, m in zip(completions, samples, modes)]
