"""DeepSeek-V4's DSML tool-call block: its tags, writing it (``format_tool_calls``) and reading it back
(``parse_tool_calls``, :class:`ToolCall`). ``core.chat`` re-exports every public name here; the rest of the chat
protocol (special tokens, modes, rendering, ``CHAT_TEMPLATE``) lives there.

The block (V4's ``encoding/README.md``, mirrored in vLLM as ``vllm/tokenizers/deepseek_v4_encoding.py``) follows the
assistant turn's content::

    <｜DSML｜tool_calls>
    <｜DSML｜invoke name="add_stock">
    <｜DSML｜parameter name="item" string="true">apple</｜DSML｜parameter>
    <｜DSML｜parameter name="qty" string="false">3</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜tool_calls>

(``string="false"``: the value is JSON). Each fixed piece of a tag is one special token (``core.chat.SPECIAL_TOKENS``);
names and values stay text. Parsing never raises and never ``eval``s: a malformed call is a :class:`ToolCall` with
``error`` set, and the scan is linear in the text.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

DSML = "｜DSML｜"                                  # V4's dsml_token (full-width vertical bars)
TOOL_CALLS = f"<{DSML}tool_calls>"
END_TOOL_CALLS = f"</{DSML}tool_calls>"
INVOKE = f'<{DSML}invoke name="'                   # + name + '">'
END_INVOKE = f"</{DSML}invoke>"
PARAM = f'<{DSML}parameter name="'                 # + name + STRING_VALUE | JSON_VALUE + value
STRING_VALUE = '" string="true">'                  # the rest of the parameter's opening tag: a string value
JSON_VALUE = '" string="false">'                   # ... a JSON value
END_PARAM = f"</{DSML}parameter>"


# ------------------------------------------------------------------------------------------------ writing
def _function(tool: dict) -> dict:
    """The function of an OpenAI-style tool (``{"type": "function", "function": {...}}``) or a bare function."""
    return tool["function"] if "function" in tool else tool


def _value(v) -> tuple[str, str]:
    return (STRING_VALUE, v) if isinstance(v, str) else (JSON_VALUE, json.dumps(v, ensure_ascii=False))


def format_tool_calls(calls: list[dict]) -> str:
    """The DSML block of ``calls`` (``[{"name", "arguments": dict}]`` or OpenAI's ``[{"function": {...}}]``), exactly
    as V4's ``encode_arguments_to_dsml`` / ``tool_calls_template`` write it (no leading separator)."""
    invokes = []
    for c in calls:
        f = _function(c)
        if not isinstance(f.get("arguments"), dict):
            raise TypeError("tool call arguments must be a dict (the chat template cannot parse JSON strings)")
        params = [f'{PARAM}{k}{s}{v}{END_PARAM}' for k, (s, v) in
                  ((k, _value(v)) for k, v in f["arguments"].items())]
        invokes.append(f'{INVOKE}{f["name"]}">\n' + "\n".join(params) + "\n" + END_INVOKE)
    return TOOL_CALLS + "\n" + "\n".join(invokes) + "\n" + END_TOOL_CALLS


def format_tool_call(name: str, arguments: dict) -> str:
    return format_tool_calls([{"name": name, "arguments": arguments}])


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class ToolCall:
    name: str | None
    arguments: dict = field(default_factory=dict)
    error: str | None = None      # a malformed call: answered with an error observation, never executed

    def as_dict(self) -> dict:
        return {"name": self.name, "arguments": self.arguments}


MAX_CALLS_PER_TURN = 8      # more calls in one turn: one error observation for the rest
MAX_CALL_CHARS = 16_000     # an invoke longer than this is malformed (no JSON parse of megabytes)
MAX_NAME_CHARS = 64
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_WS = " \t\r\n"


def _skip_ws(text: str, i: int, end: int) -> int:
    while i < end and text[i] in _WS:
        i += 1
    return i


def _parse_invoke(text: str, a: int, b: int) -> ToolCall:
    """The invoke element ``text[a:b]`` (``a`` just after ``<｜DSML｜invoke name="``, ``b`` at its closing tag)."""
    q = text.find('">', a, b)
    name = text[a:q] if q >= 0 else None
    if name is None or len(name) > MAX_NAME_CHARS or not _NAME_RE.fullmatch(name):
        return ToolCall(None, {}, "malformed tool call: bad invoke name")
    args, i = {}, q + 2
    while True:
        i = _skip_ws(text, i, b)
        if i >= b:
            return ToolCall(name, args)
        if not text.startswith(PARAM, i):
            return ToolCall(name, {}, "malformed tool call: expected a parameter")
        s = i + len(PARAM)
        e = text.find('"', s, b)
        if e < 0:
            return ToolCall(name, {}, "malformed tool call: unterminated parameter name")
        pname = text[s:e]
        if len(pname) > MAX_NAME_CHARS or not _NAME_RE.fullmatch(pname):
            return ToolCall(name, {}, "malformed tool call: bad parameter name")
        if text.startswith(STRING_VALUE, e):
            is_str, v0 = True, e + len(STRING_VALUE)
        elif text.startswith(JSON_VALUE, e):
            is_str, v0 = False, e + len(JSON_VALUE)
        else:
            return ToolCall(name, {}, 'malformed tool call: parameter needs string="true" or string="false"')
        v1 = text.find(END_PARAM, v0, b)
        if v1 < 0:
            return ToolCall(name, {}, "malformed tool call: unclosed parameter")
        raw = text[v0:v1]
        if pname in args:
            return ToolCall(name, {}, f"malformed tool call: duplicate parameter {pname}")
        if is_str:
            args[pname] = raw
        else:
            try:
                args[pname] = json.loads(raw)
            except (ValueError, RecursionError) as err:  # JSONDecodeError, int-digit limit, too deep
                return ToolCall(name, {}, f"malformed tool call: parameter {pname} is not JSON "
                                          f"({err.__class__.__name__})")
        i = v1 + len(END_PARAM)


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every invoke of every DSML ``tool_calls`` block in ``text``, in order; malformed ones carry ``error`` (never an
    exception). String parameters are taken as written, ``string="false"`` ones with ``json.loads`` (never ``eval``).
    Linear time: the scan only moves forward and each region is searched once."""
    calls: list[ToolCall] = []
    pos = 0
    while True:
        i = text.find(TOOL_CALLS, pos)
        if i < 0:
            return calls
        j = text.find(END_TOOL_CALLS, i + len(TOOL_CALLS))
        if j < 0:
            calls.append(ToolCall(None, {}, f"malformed tool call: unclosed {TOOL_CALLS}"))
            return calls
        if len(calls) >= MAX_CALLS_PER_TURN:
            calls.append(ToolCall(None, {}, f"too many tool calls in one turn (max {MAX_CALLS_PER_TURN})"))
            return calls
        k, n_before = i + len(TOOL_CALLS), len(calls)
        while True:
            k = _skip_ws(text, k, j)
            if k >= j:
                break
            if len(calls) >= MAX_CALLS_PER_TURN:
                calls.append(ToolCall(None, {}, f"too many tool calls in one turn (max {MAX_CALLS_PER_TURN})"))
                return calls
            if not text.startswith(INVOKE, k):
                calls.append(ToolCall(None, {}, "malformed tool call: unexpected text in the tool_calls block"))
                break
            e = text.find(END_INVOKE, k, j)
            if e < 0:
                calls.append(ToolCall(None, {}, "malformed tool call: unclosed invoke"))
                break
            if e - k > MAX_CALL_CHARS:
                calls.append(ToolCall(None, {}, f"malformed tool call: longer than {MAX_CALL_CHARS} characters"))
            else:
                calls.append(_parse_invoke(text, k + len(INVOKE), e))
            k = e + len(END_INVOKE)
        if len(calls) == n_before:
            calls.append(ToolCall(None, {}, "malformed tool call: empty tool_calls block"))
        pos = j + len(END_TOOL_CALLS)
