"""Small checks on the fields of a task row, shared by the verifier specs (``rewards.tasks.row_specs``) and the
format readers (``rewards.tasks.rows``, which re-exports the public ones): :class:`Bad` (a check's failure, naming the
field), values that may come as JSON text, non-empty strings, message lists in TRL's conversational form, and tool
calls in OpenAI or flat form.

No torch, no transformers: this runs wherever ``rewards`` runs.
"""
from __future__ import annotations

import json

ROLES = ("system", "user", "assistant", "tool")


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
