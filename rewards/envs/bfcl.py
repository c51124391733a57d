"""BFCL-style function calling: the model answers a question by calling the row's functions; nothing is executed.

The episode ends at the first turn with calls (``stop_after_calls``); ``verify`` compares those calls -- or none,
when the model answered without calling (BFCL's *irrelevance* rows expect that) -- with the row's ground truth
through a **checker**: ``checker(calls, row) -> (ok, reason)`` with ``calls`` the parsed ``[{"name", "arguments"}]``.
The default checker reads BFCL's possible-answer form (``[{"func": {"param": [allowed values, "" = optional]}}]``,
order-free) or plain expected calls (``[{"name", "arguments"}]``). Checkers are registered by name
(``@register_checker``; BFCL's official AST checker is ``ast``, registered below); a row picks one with ``checker:``,
or ``BfclEnv().verify(trace, row, checker=fn)`` takes any function.

**BFCL's official AST checker** is ``checker: ast`` (what every BFCL row the task loader reads uses:
``rewards.tasks.rows`` sets it, ``rewards.tasks.bfcl`` reads the package's categories). It is the ``ast_checker``
function of the installed ``bfcl-eval`` package (pinned: ``BFCL_VERSION``), loaded from its file: importing it by
name pulls in BFCL's model registry (``bfcl_eval.constants.model_config`` imports every provider SDK the package
lists, tree-sitter, openai, anthropic, ...), of which the checker reads one flag, ``underscore_to_dot`` (whether a
model had to write ``math.factorial`` as ``math_factorial``). While the checker's file runs, that one module is a stub
answering ``False`` for every model -- DSML tool calls keep dotted names -- and it is removed again afterwards. The
model's calls (``core.chat.parse_tool_calls``) become BFCL's decoded form ``[{name: {param: value}}]``; the row's
ground truth is BFCL's possible answers ``[{name: {param: [allowed values]}}]`` (plain ``{name, arguments}`` calls are
turned into that form); ``category`` (``simple_python``, ``multiple``, ``parallel``, ``parallel_multiple``, ``live_*``)
picks BFCL's rule (one call; one of several functions; several calls in any order). An empty ground truth (BFCL's
*irrelevance* categories) is right exactly when the model called nothing.

Row fields: ``prompt`` (the question), ``functions`` (BFCL's function docs, a list or its JSON), ``ground_truth``
(a list or its JSON), optional ``checker``, ``category``, ``max_turns``.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.chat import ToolCall
from core.model_source import package_dir as installed_package_dir

from ..verdict import Verdict
from .base import Trace, register_env

Checker = Callable[[list[dict], dict], tuple[bool, str]]
CHECKERS: dict[str, Checker] = {}


def register_checker(name: str):
    def deco(fn: Checker) -> Checker:
        CHECKERS[name] = fn
        return fn
    return deco


def get_checker(name: str) -> Checker:
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


# ------------------------------------------------------------------------------------------- BFCL's AST checker
BFCL_PACKAGE = "bfcl-eval"
BFCL_VERSION = "2026.3.23"          # the version pyproject's `bfcl` extra and the Makefile install
INSTALL_HINT = f"pip install --no-deps {BFCL_PACKAGE}=={BFCL_VERSION}"
MODEL_NAME = "v4-post-training"     # the model name BFCL's checker is given (it only looks up underscore_to_dot)
_PYTHON_TYPES = ("string", "integer", "float", "boolean", "array", "tuple", "dict", "any")   # the checker's types
_AST_LOCK = threading.Lock()
_AST_MODULE = None


class BfclMissing(ImportError):
    """The bfcl-eval package is not installed (or not the files this project reads); ``str(err)`` is one line."""


def package_dir() -> Path:
    """The installed ``bfcl_eval`` package folder (its data files and checker live under it)."""
    root = installed_package_dir("bfcl_eval")
    if root is None:
        raise BfclMissing(f"the {BFCL_PACKAGE} package is not installed ({INSTALL_HINT}; the Makefile does)")
    return root


class _ModelConfigs(dict):
    """BFCL's model registry as its AST checker reads it: every model keeps dotted function names."""

    def __missing__(self, key):
        return types.SimpleNamespace(underscore_to_dot=False)


def official_ast_checker():
    """The ``ast_checker`` module of the installed bfcl-eval package, loaded once from its file (see the module
    docstring for why not by name)."""
    global _AST_MODULE
    with _AST_LOCK:
        if _AST_MODULE is not None:
            return _AST_MODULE
        path = package_dir() / "eval_checker" / "ast_eval" / "ast_checker.py"
        if not path.is_file():
            raise BfclMissing(f"{BFCL_PACKAGE}: no AST checker at {path} (expected version {BFCL_VERSION}: "
                              f"{INSTALL_HINT})")
        stub_name = "bfcl_eval.constants.model_config"
        stub = types.ModuleType(stub_name)
        stub.MODEL_CONFIG_MAPPING = _ModelConfigs()
        saved = sys.modules.get(stub_name)
        sys.modules[stub_name] = stub
        try:
            spec = importlib.util.spec_from_file_location("_bfcl_official_ast_checker", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        except ImportError as e:
            raise BfclMissing(f"{BFCL_PACKAGE}: cannot load {path.name}: {type(e).__name__}: {e} "
                              f"(expected version {BFCL_VERSION}: {INSTALL_HINT})") from None
        finally:
            if saved is None:
                sys.modules.pop(stub_name, None)
            else:
                sys.modules[stub_name] = saved
        _AST_MODULE = mod
        return mod


def infer_category(functions: list, truth: list) -> str:
    """BFCL's category of a row that names none: several calls -> parallel(_multiple), several functions ->
    multiple, else simple_python; no expected call -> irrelevance."""
    if not truth:
        return "irrelevance"
    if len(truth) > 1:
        return "parallel_multiple" if len(functions) > 1 else "parallel"
    return "multiple" if len(functions) > 1 else "simple_python"


@register_checker("ast")
def ast_checker(calls: list[dict], row: dict) -> tuple[bool, str]:
    """BFCL's official AST match of the model's calls against the row's possible answers."""
    functions = _loads(row["functions"])
    truth = _loads(row["ground_truth"])
    category = row.get("category") or infer_category(functions, truth)
    if not truth or "irrelevance" in category:
        return (not calls, "ok" if not calls else f"expected no call (irrelevance), got {len(calls)}")
    mod = official_ast_checker()
    answers = [{name: params} for name, params in _possible_answers(truth)]
    output = [{c["name"]: c["arguments"]} for c in calls]
    res = mod.ast_checker(functions, output, answers, mod.Language.PYTHON, category, MODEL_NAME)
    if res.get("valid"):
        return True, "ok"
    err = res.get("error") or [""]
    first = err[0] if isinstance(err, list) and err else err
    return False, f"{res.get('error_type', 'invalid')}: {str(first)[:300]}"


def check_functions(functions) -> list[dict]:
    """BFCL function docs the AST checker can read: ``[{name, parameters: {properties, required}}]``, every
    parameter of one of the checker's Python types (an array's items too). Raises ValueError naming the place."""
    if not isinstance(functions, list):
        raise ValueError(f"expected a list of function docs, got {type(functions).__name__}")
    out = []
    for j, f in enumerate(functions):
        where = f"[{j}]"
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise ValueError(f"{where}.name: missing (each function doc is {{name, description, parameters}})")
        p = f.get("parameters")
        if p is None:
            p = {"type": "dict", "properties": {}, "required": []}
        if not isinstance(p, dict) or not isinstance(p.get("properties", {}), dict):
            raise ValueError(f"{where}.parameters: expected an object with properties")
        props = p.get("properties") or {}
        req = p.get("required", [])
        if not isinstance(req, list) or any(r not in props for r in req):
            raise ValueError(f"{where}.parameters.required: expected a list of its property names, got {req!r}")
        for name, schema in props.items():
            t = schema.get("type") if isinstance(schema, dict) else None
            if t not in _PYTHON_TYPES:
                raise ValueError(f"{where}.parameters.properties.{name}.type: {t!r} is not one of BFCL's Python "
                                 f"types ({', '.join(_PYTHON_TYPES)})")
            if t in ("array", "tuple"):
                it = (schema.get("items") or {}).get("type") if isinstance(schema.get("items"), dict) else None
                if it not in _PYTHON_TYPES:
                    raise ValueError(f"{where}.parameters.properties.{name}.items.type: {it!r} is not one of "
                                     f"BFCL's Python types")
        out.append({**f, "parameters": {**p, "properties": props, "required": list(req)}})
    return out


def possible_answers(truth, functions: list[dict]) -> list[dict]:
    """The ground truth as BFCL's possible answers ``[{name: {param: [allowed]}}]`` (from that form or from plain
    ``{name, arguments}`` calls); every function among ``functions``. Raises
    ValueError naming the place. (A parameter the docs lack is left to the checker, as in BFCL, where a few
    possible answers name one: such a call can only be right if that parameter is optional.)"""
    if not isinstance(truth, list):
        raise ValueError(f"expected a list of expected calls, got {type(truth).__name__}")
    docs = {f["name"]: f for f in functions}
    out = []
    for j, t in enumerate(truth):
        if not isinstance(t, dict) or not t:
            raise ValueError(f"[{j}]: expected {{name: {{param: [allowed values]}}}} or {{name, arguments}}")
        if set(t) == {"name", "arguments"} and isinstance(t["arguments"], dict):
            name, params = t["name"], {k: [v] for k, v in t["arguments"].items()}
        elif len(t) == 1:
            ((name, params),) = t.items()
            if not isinstance(params, dict) or not all(isinstance(v, list) for v in params.values()):
                raise ValueError(f"[{j}].{name}: expected {{param: [allowed values]}}")
        else:
            raise ValueError(f"[{j}]: expected one function per entry, got keys {sorted(t)}")
        if name not in docs:
            raise ValueError(f"[{j}]: {name!r} is not among the row's functions ({', '.join(docs) or 'none'})")
        out.append({name: params})
    return out


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
