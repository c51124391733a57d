"""Rows of a `datasets` source as task samples: TRL's three dataset formats, a per-row verifier spec, one-line errors.

A source (``tasks.<domain>`` with ``source`` other than ``generated``) is anything ``datasets.load_dataset`` reads:
a hub name, a folder, or a loader with files (``source: json`` / ``parquet`` + ``data_files``). Its columns are
renamed to ours by ``fields`` (our name -> the source's column), then every row is read in one of TRL's formats:

* ``messages``          -- a conversation: ``{"messages": [{"role", "content"}, ...]}``; assistant messages may carry
                            ``reasoning_content`` (or a ``<think>...</think>`` block in ``content``) and ``tool_calls``
                            (OpenAI form), tool results are ``tool`` messages;
* ``prompt_completion`` -- ``{"prompt", "completion"}``, each a string or a list of messages;
* ``prompt_only``       -- ``{"prompt"}``, a string or a list of messages: an RL prompt without a demonstration.

``format: auto`` tells the format of each row from the columns it fills (TRL's key sets). Every row, whatever its
format, carries its domain's **verifier spec** (:data:`SPECS`), because the same rows serve SFT, GRPO and the
held-out evaluation: math ``answer``; code ``test`` + ``entry_point`` (``prompt`` is the program's prefix, as in
HumanEval); instruct ``instruction_id_list`` + ``kwargs``; agent: what its environment (``env``, :data:`AGENT_ENVS`)
reads -- ``inventory`` (the default): ``tool_calls`` (the expected calls, ``{name, arguments}``) and
``initial_state``; ``bfcl``: ``functions`` and ``ground_truth`` (scored by BFCL's official AST checker); ``python``:
the code fields.

``source: bfcl`` reads BFCL's categories from the installed bfcl-eval package instead (``rewards/tasks/bfcl.py``).

A sample is the row with our fields plus ``prompt`` (the user message an RL stage sends), ``system`` (the
conversation's system message, if any), ``example`` (the row in TRL's format, which ``train.datasets`` turns into the
SFT conversation), and ``origin`` (source, row, format, sft_modes: what an error names). A bad row fails the load
with one line: ``tasks.<domain>: <source> row <i>: <field>: <problem>``.

No torch, no transformers: this runs wherever ``rewards`` runs. See docs/data.md.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, Callable

FORMATS = ("messages", "prompt_completion", "prompt_only")
ROLES = ("system", "user", "assistant", "tool")
SFT_MODES = ("by_reasoning", "all")


class RowError(ValueError):
    """A bad row or source; ``str(err)`` is the one line to print."""


class Bad(Exception):
    """Raised by a spec or column check: ``field`` and ``problem``; the loader adds the source and the row."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


# ------------------------------------------------------------------------------------------------ small checks
def _type(v) -> str:
    return "null" if v is None else type(v).__name__


# `datasets` stores a column mixing strings and lists (or objects) as JSON text and reads back a string that is
# itself valid JSON ("42", '{"a": 1}') as the decoded value: the likely cause of a number or object where text belongs
_MIXED = " (a column mixing strings and lists is read as JSON, which decodes a string that is valid JSON: keep one " \
         "type per column)"


def _json_value(row: dict, field: str, kinds: tuple[type, ...], what: str):
    """``row[field]`` as one of ``kinds``; a JSON string of one is decoded (generated rows store JSON strings)."""
    v = row.get(field)
    if v is None:
        raise Bad(field, "missing")
    if isinstance(v, str) and str not in kinds:
        try:
            v = json.loads(v)
        except ValueError:
            raise Bad(field, f"expected {what} (or its JSON), got a string that is not JSON") from None
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        raise Bad(field, f"expected {what}, got {_type(v)}")
    return v


def _nonempty_str(row: dict, field: str) -> str:
    v = row.get(field)
    if v is None:
        raise Bad(field, "missing")
    if not isinstance(v, str):
        raise Bad(field, f"expected a string, got {_type(v)}")
    if not v.strip():
        raise Bad(field, "empty")
    return v


def text_of(content, field: str) -> str:
    """A message's content as text: a string, null (an assistant turn that only calls tools), or a list of
    ``{"type": "text", "text": ...}`` blocks (TRL's structured form)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, b in enumerate(content):
            if not (isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)):
                raise Bad(f"{field}[{j}]", "only text blocks ({\"type\": \"text\", \"text\": ...}) are supported")
            parts.append(b["text"])
        return "".join(parts)
    raise Bad(field, f"expected a string or a list of text blocks, got {_type(content)}")


def check_messages(value, field: str, roles: tuple[str, ...] = ROLES) -> list[dict]:
    """A list of ``{"role", "content"}`` messages (TRL's conversational form) with roles among ``roles``."""
    if value is None:
        raise Bad(field, "missing")
    if not isinstance(value, list):
        raise Bad(field, f"expected a list of messages, got {_type(value)}")
    if not value:
        raise Bad(field, "empty list of messages")
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise Bad(f"{field}[{j}]", f"expected a message object, got {_type(m)}")
        role = m.get("role")
        if role not in roles:
            got = "no role" if role is None else f"role {role!r}"
            raise Bad(f"{field}[{j}].role", f"{got}; expected one of {', '.join(roles)}")
        text_of(m.get("content"), f"{field}[{j}].content")
        if role != "assistant" and m.get("content") is None:
            raise Bad(f"{field}[{j}].content", "missing")
    return value


def _prompt_of(messages: list[dict], field: str) -> tuple[str, str | None]:
    """(user text, system text) of the turns before the first assistant message: what an RL stage sends."""
    system, users = None, []
    for j, m in enumerate(messages):
        if m["role"] == "assistant":
            break
        if m["role"] == "system":
            if system is not None:
                raise Bad(f"{field}[{j}]", "a second system message (the chat format has one)")
            system = text_of(m["content"], f"{field}[{j}].content")
        elif m["role"] == "user":
            users.append(text_of(m["content"], f"{field}[{j}].content"))
    if not users:
        raise Bad(field, "no user message before the first assistant message")
    return "\n\n".join(users), system


def tool_call_of(call, field: str) -> dict:
    """``{"name", "arguments"}`` from a call in OpenAI form (``{"type": "function", "function": {"name",
    "arguments"}}``) or flat; ``arguments`` may be a JSON string. Null-valued arguments are dropped: a parquet struct
    column holds the union of every row's argument names, null where a row has none."""
    if not isinstance(call, dict):
        raise Bad(field, f"expected a tool call object, got {_type(call)}")
    fn = call.get("function") if "function" in call else call
    if not isinstance(fn, dict):
        raise Bad(f"{field}.function", f"expected an object, got {_type(fn)}")
    where = f"{field}.function" if fn is not call else field
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise Bad(f"{where}.name", "missing" if name is None else f"expected a non-empty string, got {_type(name)}")
    args = fn.get("arguments")
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            raise Bad(f"{where}.arguments", "not valid JSON") from None
    if not isinstance(args, dict):
        raise Bad(f"{where}.arguments", f"expected an object, got {_type(args)}")
    return {"name": name, "arguments": {k: v for k, v in args.items() if v is not None}}


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
    from ..ifeval import CHECKERS, evaluate

    ids = _json_value(row, "instruction_id_list", (list,), "a list of IFEval instruction ids")
    if not ids:
        raise Bad("instruction_id_list", "empty")
    for j, iid in enumerate(ids):
        if not isinstance(iid, str):
            raise Bad(f"instruction_id_list[{j}]", f"expected a string, got {_type(iid)}")
        if iid not in CHECKERS:
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
    from ..envs.bfcl import CHECKERS, CHECKER_MODULES, BfclMissing, check_functions, infer_category, \
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
    if not isinstance(checker, str) or (checker not in CHECKERS and checker not in CHECKER_MODULES):
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


def _env_python(row: dict) -> dict:
    """The Python tool (``rewards.envs.PythonEnv``): a code task in HumanEval's fields, as the code domain's."""
    return {**_spec_code(row), "max_turns": _max_turns(row, 3)}


# env name -> fn(row) -> the fields the agent verifier and the row's environment read (raises Bad naming the
# field). Another environment registers here with the verifier that reads what it returns.
AGENT_ENVS: dict[str, Callable[[dict], dict]] = {"inventory": _env_inventory, "bfcl": _env_bfcl,
                                                 "python": _env_python}


def _spec_agent(row: dict) -> dict:
    env = row.get("env") or "inventory"
    if not isinstance(env, str) or env not in AGENT_ENVS:
        raise Bad("env", f"unknown environment {env!r} (known: {', '.join(AGENT_ENVS)})")
    return {"env": env, **AGENT_ENVS[env](row)}


# domain -> fn(row) -> the normalized fields its verifier reads (raises Bad naming the field)
SPECS: dict[str, Callable[[dict], dict]] = {"math": _spec_math, "code": _spec_code, "instruct": _spec_instruct,
                                            "agent": _spec_agent}


# ------------------------------------------------------------------------------------------------------ formats
def row_format(row: dict, fmt: str) -> str:
    """The row's TRL format: ``fmt``, or with ``auto`` the one its filled columns make (TRL's key sets)."""
    if fmt != "auto":
        return fmt
    if row.get("messages") is not None:
        return "messages"
    if row.get("prompt") is not None:
        return "prompt_completion" if row.get("completion") is not None else "prompt_only"
    raise Bad("messages", "missing: a row needs messages, or prompt (with completion for a demonstration); "
                          "map the source's columns with tasks.<domain>.fields")


def _conversation_calls(messages: list[dict], field: str) -> list[dict]:
    calls = []
    for j, m in enumerate(messages):
        if m.get("role") == "assistant" and m.get("tool_calls"):
            if not isinstance(m["tool_calls"], list):
                raise Bad(f"{field}[{j}].tool_calls", f"expected a list, got {_type(m['tool_calls'])}")
            calls += [tool_call_of(c, f"{field}[{j}].tool_calls[{k}]") for k, c in enumerate(m["tool_calls"])]
    return calls


def read_row(row: dict, domain: str, fmt: str) -> dict:
    """The sample fields of one (already renamed) row: ``prompt``, ``system``, ``example`` and the verifier spec."""
    fmt = row_format(row, fmt)
    out: dict[str, Any] = {}
    explicit_prompt = None
    if fmt == "messages":
        msgs = check_messages(row.get("messages"), "messages")
        if not any(m["role"] == "assistant" for m in msgs):
            raise Bad("messages", "no assistant message (a prompt without a demonstration is format prompt_only)")
        user, system = _prompt_of(msgs, "messages")
        example = {"messages": msgs}
        if row.get("prompt") is not None:       # a mapped prompt column wins over the conversation's user turn
            explicit_prompt = _nonempty_str(row, "prompt")
    else:
        p = row.get("prompt")
        if isinstance(p, list):
            p = check_messages(p, "prompt", ("system", "user", "assistant", "tool"))
            user, system = _prompt_of(p, "prompt")
        else:
            if p is not None and not isinstance(p, str):
                raise Bad("prompt", f"expected a string or a list of messages, got {_type(p)}{_MIXED}")
            user, system = _nonempty_str(row, "prompt"), None
        example = {"prompt": p}
        if fmt == "prompt_completion":
            c = row.get("completion")
            if isinstance(c, list):
                c = check_messages(c, "completion", ("assistant", "tool"))
                if not any(m["role"] == "assistant" for m in c):
                    raise Bad("completion", "no assistant message")
            elif c is None:
                raise Bad("completion", "missing")
            elif not isinstance(c, str):
                raise Bad("completion", f"expected a string or a list of messages, got {_type(c)}{_MIXED}")
            elif not c.strip():
                raise Bad("completion", "empty")
            example["completion"] = c
    if row.get("tools") is not None:            # TRL's per-row tool schemas: kept for the conversation
        example["tools"] = row["tools"]
    out["prompt"] = explicit_prompt if explicit_prompt is not None else user
    if system:
        out["system"] = system
    out["example"] = example
    spec_row = {**row, "prompt": out["prompt"]}
    if domain == "agent" and spec_row.get("tool_calls") is None and fmt != "prompt_only":
        conv = example.get("messages") or (example["prompt"] if isinstance(example["prompt"], list) else []) + \
            (example["completion"] if isinstance(example.get("completion"), list) else [])
        spec_row["tool_calls"] = _conversation_calls(conv, "messages" if fmt == "messages" else "completion")
    out.update(SPECS[domain](spec_row))
    out["format"] = fmt
    return out


# -------------------------------------------------------------------------------------------------------- load
def source_label(source: dict) -> str:
    """How errors name a source: ``json:path/to/file.jsonl``, or the dataset name."""
    files = source.get("data_files")
    return f"{source['source']}:{files}" if files else str(source["source"])


def _split_names(spec: str) -> list[str]:
    return re.findall(r"(?:^|\+)\s*([\w.\-]+)", spec)


def load_rows(domain: str, split: str, n: int, source: dict) -> list[dict]:
    """The first ``n`` rows of the source's ``train_split`` / ``eval_split`` (``datasets`` split syntax, e.g.
    ``train[32:]``) as samples; the first bad row raises :class:`RowError` (one line)."""
    if source.get("source") == "bfcl":        # BFCL's categories from the bfcl-eval package (rewards/tasks/bfcl.py)
        from .bfcl import load_bfcl

        return load_bfcl(domain, split, n, source)
    import datasets

    label = source_label(source)
    where = f"tasks.{domain}: {label}"
    fmt = source.get("format") or "auto"
    if fmt not in ("auto",) + FORMATS:
        raise RowError(f"{where}: format: unknown {fmt!r} (expected auto, {', '.join(FORMATS)})")
    policy = source.get("sft_modes") or "by_reasoning"
    if policy not in SFT_MODES:
        raise RowError(f"{where}: sft_modes: unknown {policy!r} (expected {', '.join(SFT_MODES)})")
    files = source.get("data_files")
    if files and not any(ch in str(files) for ch in "*?[") and "://" not in str(files) \
            and not Path(files).expanduser().exists():
        raise RowError(f"{where}: data_files: no such file {files!r}")
    spec = source.get("train_split", "train") if split == "train" else source.get("eval_split", "test")
    kw = {"data_files": files} if files else {}
    counts = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    if files:   # local files through a packaged loader: no download-count ping to the hub (seconds offline)
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        instr = datasets.ReadInstruction.from_spec(spec)
        parts = {name: datasets.load_dataset(source["source"], split=name, **kw) for name in _split_names(spec)}
        ranges = instr.to_absolute({name: len(ds) for name, ds in parts.items()})
    except Exception as e:  # noqa: BLE001 — report which source failed, in one line
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        raise RowError(f"{where}: cannot load split {spec!r}: {type(e).__name__}: {msg}") from None
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counts
    fields = dict(source.get("fields") or {})
    if parts:
        columns = next(iter(parts.values())).column_names
        for ours, theirs in fields.items():
            if theirs not in columns:
                raise RowError(f"{where}: fields.{ours}: no column {theirs!r} (columns: {', '.join(columns)})")
    out = []
    for r in ranges:
        ds = parts[r.splitname]
        tag = "" if r.splitname == "train" else f" [{r.splitname}]"
        for i in range(r.from_, r.to):
            if len(out) >= n:
                return out
            row = dict(ds[i])
            for ours, theirs in fields.items():
                row[ours] = row[theirs]
            try:
                s = {**row, **read_row(row, domain, fmt)}
            except Bad as e:
                raise RowError(f"{where}{tag} row {i}: {e.field}: {e.problem}") from None
            s.pop("messages", None)
            s.pop("completion", None)
            if s.get("id") is None:
                s["id"] = f"{domain}/{split}/{len(out)}"
            s["domain"] = domain
            s["origin"] = {"source": label + tag, "row": i, "format": s.pop("format"), "sft_modes": policy}
            out.append(s)
    return out


def row_error(sample: dict, field: str, problem: str) -> RowError:
    """The one-line error for ``sample`` (a row :func:`load_rows` returned), e.g. from the SFT conversion."""
    o = sample.get("origin") or {}
    return RowError(f"tasks.{sample.get('domain')}: {o.get('source', '?')} row {o.get('row', '?')}: {field}: "
                    f"{problem}")
