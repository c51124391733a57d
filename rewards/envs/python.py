"""The Python tool for multi-turn code agents: ``run_python(code)`` runs code in the code sandbox.

Each call runs in a fresh sandboxed interpreter (``rewards.sandbox``: no network, no state kept between calls) and
answers with its status (``ok``, ``error``, ``timeout``, ...), its stdout and, when not empty, its stderr (an
uncaught exception's traceback included), each cut to ``MAX_OUT_CHARS``. The row is a code task in HumanEval's fields
(``prompt``, ``test``, ``entry_point``); the verifier runs the row's tests on the final answer's code, exactly as the
code domain's verifier does (``rewards.code``), so tool outputs in the transcript are never trusted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.chat import ToolCall

from ..verdict import Verdict
from .base import Trace, register_env, tool_schema

MAX_CODE_CHARS = 16_000
MAX_OUT_CHARS = 800
RUN_TIMEOUT_S = 5.0         # wall clock per run_python call
VERIFY_TIMEOUT_S = 3.0      # per test run in the verifier (inside the agent verifier's worker time limit)
_ENTRY = "_run_python_done_"
# The code runs inside exec so that a traceback can be printed (the sandbox reports only the exception's type);
# the wrapper's own frame is skipped.
_WRAPPER = '''import traceback as _tb
try:
    exec(compile({src!r}, "<code>", "exec"), {{"__name__": "__main__"}})
except SystemExit:
    pass
except BaseException as _e:
    _tb.print_exception(type(_e), _e, _e.__traceback__.tb_next)
    raise
def {entry}():
    return None
'''
_CHECK = "def check(candidate):\n    pass\n"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_OUT_CHARS else text[:MAX_OUT_CHARS] + "\n[truncated]"


def run_python(code: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    """``{"status", "stdout", "stderr"}`` of running ``code`` in the sandbox."""
    from ..sandbox import get_pool

    res = get_pool().run(_WRAPPER.format(src=code, entry=_ENTRY), _CHECK, _ENTRY, timeout_s)
    status = res.get("status") or "error"
    if res.get("passed"):
        status = "ok"
    elif status.startswith("program "):
        status = "error"
    return {"status": status, "stdout": res.get("stdout", ""), "stderr": res.get("stderr", "")}


@register_env
@dataclass
class PythonEnv:
    state: dict = field(default_factory=lambda: {"runs": []})

    name = "python"
    intro = "You can run Python code to check your work. Answer with the final code."
    stop_after_calls = False
    blocking = True

    def tools(self) -> list[dict]:
        return [tool_schema("run_python", {"code": "string"})]

    def reset(self, row: dict) -> dict:
        self.state = {"runs": []}
        return self.state

    def step(self, call: ToolCall) -> str:
        if call.error:
            return f"error: {call.error}"
        if call.name != "run_python":
            return f"error: unknown tool {call.name!r}"
        code = call.arguments.get("code")
        if set(call.arguments) != {"code"} or not isinstance(code, str):
            return "error: run_python takes one string argument, code"
        if len(code) > MAX_CODE_CHARS:
            return f"error: code longer than {MAX_CODE_CHARS} characters"
        r = run_python(code)
        self.state["runs"].append({"code": code[:200], "status": r["status"]})
        out = f"status: {r['status']}\nstdout:\n{_cut(r['stdout'])}"
        return out + (f"\nstderr:\n{_cut(r['stderr'])}" if r["stderr"] else "")

    def verify(self, trace: Trace, row: dict) -> Verdict:
        from ..code import verify_code

        if trace.final is None:
            return Verdict(0.0, {"failed_checks": ["no_final_answer_within_turn_cap"]})
        sample = {**row, "timeout_s": row.get("timeout_s") or VERIFY_TIMEOUT_S}
        v = verify_code(trace.turns[-1], sample, trace.mode)
        checks = [] if v.score == 1.0 else ["tests_failed"]
        return Verdict(v.score, {"failed_checks": checks, "tests": v.details.get("error") or "passed",
                                 "code": (v.details.get("extracted") or "")[:500]})
