"""Code verifier: run the completion against the sample's HumanEval-style tests in the sandbox.

Accepts a fenced code block (the last ```python block, or the first one defining ``entry_point``) or bare code.
If the code defines ``def <entry_point>`` it is appended after the prompt (so the prompt's imports and helpers are
available, and the completion's definition wins); otherwise it is taken as the body continuing the prompt.
Score 1 only when ``check(entry_point)`` returned in the sandbox and the post-check nonce came back.
"""
from __future__ import annotations

import re

from .base import Verdict, answer_part, clean_completion, fail, register_verifier
from .chat import END_THINK

MAX_PROGRAM_CHARS = 200_000
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(answer: str, entry_point: str | None = None) -> str:
    blocks = [(lang.lower(), body) for lang, body in _FENCE_RE.findall(answer)]
    if not blocks:
        return answer
    py = [b for lang, b in blocks if lang in ("", "python", "py", "python3")] or [b for _, b in blocks]
    if entry_point:
        defining = [b for b in py if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", b, re.M)]
        if defining:
            return defining[-1]
    return py[-1]


def build_program(sample: dict, code: str) -> str:
    prompt = sample.get("prompt", "") or ""
    entry = sample.get("entry_point", "")
    if entry and re.search(rf"^def\s+{re.escape(entry)}\s*\(", code, re.M):
        return prompt + "\n" + code + "\n"
    if code.startswith(prompt) and prompt:
        return code + "\n"
    return prompt + code + "\n"


@register_verifier("code", isolation="sandbox")
def verify_code(completion: str, sample: dict, mode: str) -> Verdict:
    from .sandbox import get_pool

    answer, ok, err = answer_part(completion, mode)
    if not ok:
        return fail(err, format_ok=False)
    # answer_part strips whitespace, but a body continuing the prompt needs its first line's indentation
    raw = clean_completion(completion)
    answer = (raw if mode == "non_think" else raw.split(END_THINK, 1)[1]).rstrip()
    for k in ("test", "entry_point"):
        if not isinstance(sample.get(k), str) or not sample[k]:
            return fail(f"sample lacks {k!r}", format_ok=True)
    code = extract_code(answer, sample["entry_point"])
    if not code.strip():
        return fail("empty program", format_ok=True)
    program = build_program(sample, code)
    if len(program) > MAX_PROGRAM_CHARS:
        return fail(f"program longer than {MAX_PROGRAM_CHARS} chars", format_ok=True)
    res = get_pool().run(program, sample["test"], sample["entry_point"], sample.get("timeout_s"))
    passed = bool(res.get("passed"))
    details = {"extracted": code[:2000], "format_ok": True, "status": res.get("status"),
               "sandbox_time_s": res.get("time_s"), "stdout": res.get("stdout", "")[:2000],
               "stderr": res.get("stderr", "")[-2000:], "failed_checks": [] if passed else [res.get("status")],
               "error": None if passed else res.get("status")}
    return Verdict(1.0 if passed else 0.0, details)
