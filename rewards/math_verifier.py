"""Math verifier: the final answer (last ``\\boxed{…}``, else a final-answer line) checked with math-verify.

Runs inside a ``rewards.pool`` worker (hard wall-clock limit, memory cap); math-verify's own SIGALRM timeouts are
switched off (``None``). Nothing parsed leaves the worker: ``details["extracted"]`` is the raw text we extracted,
never the string form of a sympy object (printing one can itself hang).
"""
from __future__ import annotations

import re
from functools import lru_cache

from .base import Verdict, answer_part, fail, register_verifier

MAX_ANSWER_CHARS = 2000  # an extracted answer longer than this is not a final answer
_FINAL_RE = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*[:]?\s*(.+?)\s*$", re.I)


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` / ``\\fbox{…}`` with balanced braces (linear scan)."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    n = len(text)
    while j < n:
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
        j += 1
    return None  # unbalanced: malformed


def _final_line(text: str) -> str | None:
    """The answer on the last line that says "answer is …" / "Final answer: …"."""
    tail = text[-20000:]  # only the end of a (possibly huge) answer can hold its final line
    for line in reversed(tail.splitlines()):
        if len(line) > 4 * MAX_ANSWER_CHARS:
            continue
        m = _FINAL_RE.search(line)
        if m:
            ans = m.group(1).strip().rstrip(".").strip()
            return ans.strip("$").strip() or None
    return None


def extract_answer(text: str) -> tuple[str | None, str]:
    b = _boxed(text)
    if b is not None:
        return b.strip(), "boxed"
    f = _final_line(text)
    if f is not None:
        return f, "final_line"
    return None, "none"


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse
    return parse(f"${gold}$", parsing_timeout=None)


def _parse_pred(ans: str):
    from math_verify import parse
    return parse(f"\\boxed{{{ans}}}", parsing_timeout=None)


@register_verifier("math", isolation="worker")
def verify_math(completion: str, sample: dict, mode: str) -> Verdict:
    from math_verify import verify

    answer, ok, err = answer_part(completion, mode)
    if not ok:
        return fail(err, format_ok=False)
    gold = str(sample.get("answer", "")).strip()
    if not gold:
        return fail("sample has no gold answer", format_ok=True)
    ans, how = extract_answer(answer)
    if ans is None:
        return fail("no \\boxed{} answer or final-answer line", format_ok=True)
    if len(ans) > MAX_ANSWER_CHARS:
        return fail(f"extracted answer longer than {MAX_ANSWER_CHARS} chars", format_ok=True,
                    extracted=ans[:200] + "…")
    g = _parse_gold(gold)
    if not g:
        return fail(f"gold answer {gold!r} does not parse", format_ok=True, extracted=ans)
    p = _parse_pred(ans)
    if not p:
        return fail("extracted answer does not parse", format_ok=True, extracted=ans)
    correct = bool(verify(g, p, timeout_seconds=None))
    return Verdict(1.0 if correct else 0.0, {"extracted": ans, "extraction": how, "format_ok": True,
                                              "failed_checks": [] if correct else ["answer_mismatch"]})
