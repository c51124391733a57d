"""BFCL-style function calling: the model answers a question by calling the row's functions; nothing is executed.

The episode ends at the first turn with calls (``stop_after_calls``); ``verify`` compares those calls -- or none,
when the model answered without calling (BFCL's *irrelevance* rows expect that) -- with the row's ground truth
through a **checker**: ``checker(calls, row) -> (ok, reason)`` with ``calls`` the parsed ``[{"name", "arguments"}]``.
The default checker reads BFCL's possible-answer form (``[{"func": {"param": [allowed values, "" = optional]}}]``,
order-free) or plain expected calls (``[{"name", "arguments"}]``). BFCL's official AST checker plugs in by name:
``@register_checker("ast")`` in a module listed in ``CHECKER_MODULES`` (imported on first use, also inside verifier
workers); a row picks it with ``checker: ast``, or ``BfclEnv().verify(trace, row, checker=fn)`` takes any function.

Row fields: ``prompt`` (the question), ``functions`` (BFCL's function docs, a list or its JSON), ``ground_truth``
(a list or its JSON), optional ``checker``, ``max_turns``.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Callable

from core.chat import ToolCall

from ..verdict import Verdict
from .base import Trace, register_env

Checker = Callable[[list[dict], dict], tuple[bool, str]]
CHECKERS: dict[str, Checker] = {}
CHECKER_MODULES: dict[str, str] = {}    # checker name -> the module that registers it (e.g. BFCL's AST checker)


def register_checker(name: str):
    def deco(fn: Checker) -> Checker:
        CHECKERS[name] = fn
        return fn
    return deco


def get_checker(name: str) -> Checker:
    if name not in CHECKERS and name in CHECKER_MODULES:
        importlib.import_module(CHECKER_MODULES[name])
    if name not in CHECKERS:
        raise ValueError(f"unknown BFCL checker {name!r}; known: {', '.join(sorted(CHECKERS))}")
    return CHECKERS[name]


def _loads(value):
    return json.loads(value) if isinstance(value, str) else value


def _possible_answers(truth: list) -> list[tuple[str, dict]]:
    """``[(name, {param: [allowed]})]`` from either ground-truth form."""
    out = []
    for t in truth:
        if "name" in t and "arguments" in t and isinstance(t["arguments"], dict):
            out.append((t["name"], {k: [v] for k, v in t["arguments"].items()}))
        else:
            ((name, params),) = t.items()
            out.append((name, dict(params)))
    return out


def _same(x, a) -> bool:
    if isinstance(x, bool) or isinstance(a, bool):     # True is not 1 here
        return x is a
    return x == a


def _matches(call: dict, name: str, params: dict) -> bool:
    if call["name"] != name:
        return False
    args = call["arguments"]
    if set(args) - set(params):
        return False
    for p, allowed in params.items():
        if p not in args:
            if "" not in allowed:       # BFCL: "" among the allowed values marks an optional parameter
                return False
        elif not any(_same(args[p], a) for a in allowed):
            return False
    return True


@register_checker("default")
def possible_answer_checker(calls: list[dict], row: dict) -> tuple[bool, str]:
    """Each expected call matched by exactly one call (any order), values among the allowed ones."""
    expected = _possible_answers(_loads(row["ground_truth"]))
    if len(calls) != len(expected):
        return False, f"expected {len(expected)} calls, got {len(calls)}"
    left = list(range(len(calls)))
    for name, params in expected:
        hit = next((i for i in left if _matches(calls[i], name, params)), None)
        if hit is None:
            return False, f"no call matches the expected {name}"
        left.remove(hit)
    return True, "ok"


@register_env
@dataclass
class BfclEnv:
    state: dict = field(default_factory=lambda: {"functions": [], "calls": []})

    name = "bfcl"
    intro = ""
    stop_after_calls = True
    blocking = False

    def tools(self) -> list[dict]:
        out = []
        for f in self.state["functions"]:
            f = dict(f)
            if isinstance(f.get("parameters"), dict) and f["parameters"].get("type") == "dict":
                f["parameters"] = {**f["parameters"], "type": "object"}    # BFCL's "dict" is JSON Schema's object
            out.append({"type": "function", "function": f})
        return out

    def reset(self, row: dict) -> dict:
        self.state = {"functions": list(_loads(row["functions"])), "calls": []}
        return self.state

    def step(self, call: ToolCall) -> str:
        """Records the call; BFCL's calls are judged, not executed."""
        if call.error:
            return f"error: {call.error}"
        self.state["calls"].append(call.as_dict())
        return "ok: recorded (not executed)"

    def verify(self, trace: Trace, row: dict, checker: Checker | None = None) -> Verdict:
        calls = next((t for t in trace.calls if t), [])
        details = {"calls": [c.as_dict() for c in calls]}
        if trace.end not in ("tool_calls", "stop"):
            return Verdict(0.0, {**details, "failed_checks": [f"episode_ended_by_{trace.end or 'nothing'}"]})
        bad = [c.error for c in calls if c.error]
        if bad:
            return Verdict(0.0, {**details, "failed_checks": ["malformed_call"], "reason": bad[0]})
        fn = checker or get_checker(row.get("checker") or "default")
        ok, reason = fn([c.as_dict() for c in calls], row)
        return Verdict(1.0 if ok else 0.0, {**details, "failed_checks": [] if ok else ["calls_mismatch"],
                                            "reason": reason})
