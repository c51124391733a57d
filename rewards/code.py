"""Code verifier: run the completion against the sample's HumanEval-style tests in the sandbox.

Accepts a fenced code block (the last ```python block, or the first one defining ``entry_point``) or bare code.
If the code defines ``def <entry_point>`` it is appended after the prompt (so the prompt's imports and helpers are
available, and the completion's definition wins); otherwise it is taken as the body continuing the prompt.
Score 1 only when ``check(entry_point)`` returned in the sandbox and the post-check nonce came back.
"""
from __future__ import annotations

import re

from .base import Verdict, answer_part, clean_completion, fail, register_verifier
from core.chat import END_THINK

MAX_PROGRAM_CHARS = 200_000
MAX_ANSWER_CHARS = 4 * MAX_PROGRAM_CHARS   # longer answers are refused before any parsing
SANDBOX_FAILURES = ("sandbox_unavailable", "sandbox_error", "setup_error")
_LANG_RE = re.compile(r"[ \t]*([A-Za-z0-9_+-]*)")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    r"""``(language, body)`` of each ```` ``` ```` block (an unclosed last block runs to the end), in linear time.

    Same result as ``re.findall(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", text, re.S)``, which is
    quadratic on hostile input (thousands of fences without a newline took seconds, in the calling process)."""
    out, i = [], 0
    while True:
        j = text.find("```", i)
        nl = text.find("\n", j + 3) if j >= 0 else -1
        if nl < 0:
            return out
        end = text.find("```", nl + 1)
        out.append((_LANG_RE.match(text, j + 3, nl).group(1), text[nl + 1:] if end < 0 else text[nl + 1:end]))
        if end < 0:
            return out
        i = end + 3


def extract_code(answer: str, entry_point: str | None = None) -> str:
    blocks = [(lang.lower(), body) for lang, body in fenced_blocks(answer)]
    if not blocks:
        return answer
    py = [b for lang, b in blocks if lang in ("", "python", "py", "python3")] or [b for _, b in blocks]
    if entry_point:
        # [ \t]*, not \s*: with re.M, \s* rescans every following blank line from each line start (quadratic)
        defining = [b for b in py if re.search(rf"^[ \t]*def[ \t]+{re.escape(entry_point)}[ \t]*\(", b, re.M)]
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
    if len(answer) > MAX_ANSWER_CHARS:
        return fail(f"answer longer than {MAX_ANSWER_CHARS} chars", format_ok=True)
    code = extract_code(answer, sample["entry_point"])
    if not code.strip():
        return fail("empty program", format_ok=True)
    program = build_program(sample, code)
    if len(program) > MAX_PROGRAM_CHARS:
        return fail(f"program longer than {MAX_PROGRAM_CHARS} chars", format_ok=True)
    res = get_pool().run(program, sample["test"], sample["entry_point"], sample.get("timeout_s"))
    passed = bool(res.get("passed"))
    status = str(res.get("status"))
    # the sandbox lost (a zygote that died or could not start after the stage's start check) or its own set-up
    # failing is no judgement of the program: counted as a verifier failure, never as a wrong answer
    unscored = not passed and status.startswith(SANDBOX_FAILURES)
    details = {"verifier_error": status if unscored else None, "extracted": code[:2000], "format_ok": True, "status": res.get("status"),
               "sandbox_time_s": res.get("time_s"), "stdout": res.get("stdout", "")[:2000],
               "stderr": res.get("stderr", "")[-2000:], "failed_checks": [] if passed else [res.get("status")],
               "error": None if passed else res.get("status")}
    return Verdict(1.0 if passed else 0.0, details)
