"""The verifier spec of a task row, per domain (:data:`SPECS`), and the agent environments' row checks
(:data:`AGENT_ENVS`); ``rewards.tasks.rows`` applies them to every row it reads and re-exports both tables.

Every row, whatever its TRL format, carries its domain's spec, because the same rows serve SFT, GRPO and the held-out
evaluation: math ``answer``; code ``test`` + ``entry_point`` (``prompt`` is the program's prefix, as in HumanEval);
instruct ``instruction_id_list`` + ``kwargs``; agent: what its environment (``env``) reads -- ``inventory`` (the
default): ``tool_calls`` and ``initial_state``; ``bfcl``: ``functions`` and ``ground_truth``; ``python``: the code
fields. A spec returns the normalized fields its verifier reads, or raises :class:`~rewards.tasks.row_checks.Bad`
naming the field.

No torch, no transformers: this runs wherever ``rewards`` runs.
"""
from __future__ import annotations

import ast
import json
import re
from typing import Callable

from .row_checks import Bad, _json_value, _nonempty_str, _type, check_messages, tool_call_of


# --------------------------------------------------------------------------------------------- verifier specs
def _spec_math(row: dict) -> dict:
    a = row.get("answer")
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        a = str(a)
    if a is None:
        raise Bad("answer", "missing")
    if not isinstance(a, str):
        raise Bad("answer", f"expected a string or a number, got {_type(a)}")
    if not a.strip():
        raise Bad("answer", "empty")
    return {"answer": a.strip()}


def _python_prefix(prompt: str) -> bool:
    for text in (prompt, prompt.rstrip() + "\n    pass\n"):   # HumanEval: a signature + docstring, no body
        try:
            ast.parse(text)
            return True
        except (SyntaxError, ValueError):
            pass
    return False


def _spec_code(row: dict) -> dict:
    test = _nonempty_str(row, "test")
    entry = _nonempty_str(row, "entry_point")
    if not entry.isidentifier():
        raise Bad("entry_point", f"{entry!r} is not a Python identifier")
    if not re.search(r"^\s*def\s+check\s*\(", test, re.M):
        raise Bad("test", "defines no check(candidate) function (HumanEval's convention)")
    prompt = row.get("prompt") or ""
    if prompt and not _python_prefix(prompt):
        raise Bad("prompt", "not Python: the code verifier puts the prompt before the program (HumanEval's "
                            "prompt), so a natural-language prompt would fail every completion")
    out = {"test": test, "entry_point": entry}
    if row.get("timeout_s") is not None:
        t = row["timeout_s"]
        if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
            raise Bad("timeout_s", f"expected a positive number, got {t!r}")
        out["timeout_s"] = float(t)
    return out


def _spec_instruct(row: dict) -> dict:
    from ..ifeval import CHECKERS, IFBENCH_CHECKERS, evaluate

    ids = _json_value(row, "instruction_id_list", (list,), "a list of IFEval instruction ids")
    if not ids:
        raise Bad("instruction_id_list", "empty")
    for j, iid in enumerate(ids):
        if not isinstance(iid, str):
            raise Bad(f"instruction_id_list[{j}]", f"expected a string, got {_type(iid)}")
        if iid not in CHECKERS and iid not in IFBENCH_CHECKERS:     # IFBench's ids: rewards/ifbench.py
            raise Bad(f"instruction_id_list[{j}]", f"unknown IFEval instruction {iid!r}")
    kwargs = [{} for _ in ids] if row.get("kwargs") is None else \
        _json_value(row, "kwargs", (list,), "a list of objects, one per instruction")
    if len(kwargs) != len(ids):
        raise Bad("kwargs", f"{len(kwargs)} entries for {len(ids)} instructions")
    clean = []
    for j, kw in enumerate(kwargs):
        if kw is None:
            kw = {}
        if not isinstance(kw, dict):
            raise Bad(f"kwargs[{j}]", f"expected an object, got {_type(kw)}")
        clean.append({k: v for k, v in kw.items() if v is not None})   # IFEval's parquet: every key, null if unused
    errors = evaluate("x", ids, clean, {"prompt": row.get("prompt") or ""})["errors"]
    for j, iid in enumerate(ids):
        if "missing argument" in str(errors.get(iid, "")):
            raise Bad(f"kwargs[{j}]", f"{iid}: {errors[iid]}")
    return {"instruction_id_list": list(ids), "kwargs": clean}


def _expected_calls(row: dict) -> list[dict]:
    calls = row.get("tool_calls")
    if calls is None:
        raise Bad("tool_calls", "missing (the expected calls, [{name, arguments}]; a messages row may instead "
                                "carry them as its assistant tool_calls)")
    if isinstance(calls, str):
        calls = _json_value(row, "tool_calls", (list,), "a list of tool calls")
    if not isinstance(calls, list):
        raise Bad("tool_calls", f"expected a list of tool calls, got {_type(calls)}")
    return [tool_call_of(c, f"tool_calls[{j}]") for j, c in enumerate(calls)]


def _max_turns(row: dict, default: int) -> int:
    mt = row.get("max_turns")
    if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or mt < 1):
        raise Bad("max_turns", f"expected a positive integer, got {mt!r}")
    return mt if mt is not None else default


def _env_inventory(row: dict) -> dict:
    """The inventory environment (``rewards.envs.InventoryEnv``): the expected calls (``tool_calls``) are replayed
    on ``initial_state``, giving the ``reference_state`` the agent verifier compares with."""
    from ..envs import InventoryEnv, ToolCall

    calls = _expected_calls(row)
    state = _json_value(row, "initial_state", (dict,), "an object {stock: {...}, price: {...}}")
    for k in ("stock", "price"):
        if not isinstance(state.get(k, {}), dict):
            raise Bad(f"initial_state.{k}", f"expected an object, got {_type(state.get(k))}")
    state = {"stock": dict(state.get("stock") or {}), "price": dict(state.get("price") or {})}
    env = InventoryEnv.from_state(state)
    for j, c in enumerate(calls):
        obs = env.call(ToolCall(c["name"], c["arguments"]))
        if obs.startswith("error:"):
            raise Bad(f"tool_calls[{j}]", f"the inventory answers {obs!r}")
    final = json.dumps(env.state, sort_keys=True)
    if row.get("reference_state") is not None:
        ref = _json_value(row, "reference_state", (dict,), "an object")
        if json.dumps(ref, sort_keys=True) != final:
            raise Bad("reference_state", "differs from replaying tool_calls on initial_state")
    out = {"tool_calls": calls, "reference_actions": json.dumps(calls),
           "initial_state": json.dumps(state, sort_keys=True), "reference_state": final}
    a = row.get("answer")
    if a is not None and (not isinstance(a, (str, int, float)) or isinstance(a, bool)):
        raise Bad("answer", f"expected a string or a number, got {_type(a)}")
    out["answer"] = "" if a is None else str(a).strip()
    out["max_turns"] = _max_turns(row, max(4, len(calls) + 1))   # room for one call per turn + the answer
    return out


def _env_bfcl(row: dict) -> dict:
    """BFCL function calling (``rewards.envs.BfclEnv``): ``functions`` (BFCL's function docs) and ``ground_truth``
    (BFCL's possible answers ``[{name: {param: [allowed]}}]`` or plain ``{name, arguments}`` calls; ``[]``: no call
    is right), each a list or its JSON; ``tool_calls`` is not read. ``checker`` defaults to ``ast`` (BFCL's official
    AST checker, which needs the bfcl-eval package); ``category`` defaults to the one the calls imply."""
    from ..envs.bfcl import CHECKERS, BfclMissing, check_functions, infer_category, \
        official_ast_checker, possible_answers

    def bad(field: str, e: ValueError) -> Bad:       # "[1].name: missing" -> field "functions[1].name"
        where, _, problem = str(e).partition(": ")
        return Bad(field + where, problem) if where.startswith("[") and problem else Bad(field, str(e))

    try:
        functions = check_functions(_json_value(row, "functions", (list,), "a list of function docs"))
    except ValueError as e:
        raise bad("functions", e) from None
    try:
        truth = possible_answers(_json_value(row, "ground_truth", (list,), "a list of expected calls"), functions)
    except ValueError as e:
        raise bad("ground_truth", e) from None
    checker = row.get("checker") or "ast"
    if not isinstance(checker, str) or checker not in CHECKERS:
        raise Bad("checker", f"unknown BFCL checker {checker!r} (known: {', '.join(sorted(CHECKERS))})")
    if checker == "ast" and truth:
        try:
            official_ast_checker()
        except BfclMissing as e:
            raise Bad("checker", f"ast: {e}") from None
    category = row.get("category") or infer_category(functions, truth)
    if not isinstance(category, str):
        raise Bad("category", f"expected a string, got {_type(category)}")
    return {"functions": json.dumps(functions), "ground_truth": json.dumps(truth), "checker": checker,
            "category": category, "max_turns": _max_turns(row, 1)}


def _env_tooltalk(row: dict) -> dict:
    """ToolTalk's mock APIs (``rewards.envs.ToolTalkEnv``; rows from ``rewards.tasks.tooltalk``): ``tooltalk`` (an
    object: ``metadata`` with ``timestamp``, ``user``, ``api_history`` and ``apis``: the earlier turns' and this
    turn's ground-truth calls), ``api_names`` (the APIs shown, each one of ToolTalk's), ``history`` (the earlier
    messages), ``system``; ``tool_calls`` is not read. Needs the nvidia-tooltalk package."""
    from ..envs.tooltalk import ToolTalkMissing, api_classes

    spec = _json_value(row, "tooltalk", (dict,), "an object {metadata, user, api_history, apis}")
    if not isinstance(spec.get("metadata"), dict) or not isinstance(spec["metadata"].get("timestamp"), str):
        raise Bad("tooltalk.metadata", "expected an object with a timestamp")
    for key in ("api_history", "apis"):
        calls = spec.get(key) or []
        if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("request"), dict)
                                                   and "response" in c for c in calls):
            raise Bad(f"tooltalk.{key}", "expected a list of {request, response, exception} records")
    names = _json_value(row, "api_names", (list,), "a list of ToolTalk API names")
    try:
        known = api_classes()
    except ToolTalkMissing as e:
        raise Bad("env", f"tooltalk: {e}") from None
    for j, n in enumerate(names):
        if n not in known:
            raise Bad(f"api_names[{j}]", f"unknown ToolTalk API {n!r}")
    history = _json_value(row, "history", (list,), "a list of messages") if row.get("history") is not None else []
    if history:
        check_messages(history, "history", ("user", "assistant", "tool"))
    return {"tooltalk": json.dumps(spec), "api_names": json.dumps(names), "history": json.dumps(history),
            "max_turns": _max_turns(row, len(spec.get("apis") or []) + 2)}


def _env_python(row: dict) -> dict:
    """The Python tool (``rewards.envs.PythonEnv``): a code task in HumanEval's fields, as the code domain's."""
    return {**_spec_code(row), "max_turns": _max_turns(row, 3)}


# env name -> fn(row) -> the fields the agent verifier and the row's environment read (raises Bad naming the
# field). Another environment registers here with the verifier that reads what it returns.
AGENT_ENVS: dict[str, Callable[[dict], dict]] = {"inventory": _env_inventory, "bfcl": _env_bfcl,
                                                 "python": _env_python, "tooltalk": _env_tooltalk}


def _spec_agent(row: dict) -> dict:
    env = row.get("env") or "inventory"
    if not isinstance(env, str) or env not in AGENT_ENVS:
        raise Bad("env", f"unknown environment {env!r} (known: {', '.join(AGENT_ENVS)})")
    return {"env": env, **AGENT_ENVS[env](row)}


# domain -> fn(row) -> the normalized fields its verifier reads (raises Bad naming the field)
SPECS: dict[str, Callable[[dict], dict]] = {"math": _spec_math, "code": _spec_code, "instruct": _spec_instruct,
                                            "agent": _spec_agent}
