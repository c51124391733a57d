"""The chat format every stage shares: special tokens, the three reasoning modes, the mode system prompts, and
DeepSeek-V4's agent format (DSML tool calls, tool results in the user turn).

DeepSeek's encoding: a non-think assistant turn is prefilled with ``</think>`` (empty reasoning), a think turn with
``<think>``; Think Max additionally puts a dedicated prefix before the system prompt. ``CHAT_TEMPLATE`` (the Jinja
template every tokenizer of a run carries) renders exactly these strings; ``render_prompt`` is its pure-Python twin for
code that has no tokenizer at hand, and a test keeps the two in step. This module is the one place the protocol lives
(the DSML block's tags, writer and parser are in ``core.dsml``, re-exported here).

**Tool calls** (DeepSeek-V4's ``encoding/README.md``, mirrored in vLLM as ``vllm/tokenizers/deepseek_v4_encoding.py``):
the assistant turn ends with a DSML block after its content, then the end token::

    <|assistant|><think>reasoning</think>

    <｜DSML｜tool_calls>
    <｜DSML｜invoke name="add_stock">
    <｜DSML｜parameter name="item" string="true">apple</｜DSML｜parameter>
    <｜DSML｜parameter name="qty" string="false">3</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜tool_calls><|end|>

(``string="false"``: the value is JSON). The results come back in the next *user* turn, one
``<tool_result>…</tool_result>`` per call in call order, joined by a blank line; a user message that directly follows
tool results joins that same turn (V4's ``merge_tool_messages``). Messages use the OpenAI roles: an assistant message
may carry ``tool_calls`` (``[{"name", "arguments"}]`` or ``[{"function": {...}}]``, arguments a dict) rendered as the
block above, or hold the block in its ``content`` as the model wrote it; each ``{"role": "tool"}`` message is one
result. **Reasoning**: V4's rule -- in a conversation without tools, the reasoning of assistant turns before the last
user message is dropped (they render as non-think turns); a conversation with tools (given, or any tool call or
result) keeps every turn's reasoning, so within a turn of several tool rounds the earlier rounds' reasoning stays in
the context and the conversation grows append-only. **Tools** are described in the system prompt (``tools=`` or a
``tools`` key on the system message; V4 appends them to the system content), one line per tool (``render_tools``).

Special tokens: each fixed piece of a DSML tag (``<｜DSML｜tool_calls>``, ``<｜DSML｜invoke name="``,
``<｜DSML｜parameter name="``, ``" string="true">``, ``" string="false">`` and the closing tags) and the tool-result
tags are single special tokens; names and values stay text. The tiny model's 512-token context and 256-token SFT
window cannot afford the BPE pieces a byte-level tokenizer spends on them (~12 for ``<｜DSML｜parameter name="``:
full-width bars and punctuation runs are split before merging, whatever the corpus), with them a call costs about
what a JSON call did (~25 tokens for two parameters), and an atomic tag can never be half-written.
"""
from __future__ import annotations

import json
import re

from .dsml import (DSML, END_INVOKE, END_PARAM, END_TOOL_CALLS, INVOKE, JSON_VALUE, MAX_CALL_CHARS,
                   MAX_CALLS_PER_TURN, MAX_NAME_CHARS, PARAM, STRING_VALUE, TOOL_CALLS, ToolCall, _function,
                   format_tool_call, format_tool_calls, parse_tool_calls)

MODES = ("non_think", "think_high", "think_max")

BOS = "<|bos|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
PAD = "<|pad|>"
THINK = "<think>"
END_THINK = "</think>"
TOOL_RESULT = "<tool_result>"
END_TOOL_RESULT = "</tool_result>"
SPECIAL_TOKENS = [PAD, BOS, SYSTEM, USER, ASSISTANT, END, THINK, END_THINK, TOOL_CALLS, END_TOOL_CALLS, INVOKE,
                  END_INVOKE, PARAM, STRING_VALUE, JSON_VALUE, END_PARAM, TOOL_RESULT, END_TOOL_RESULT]

# The beginning of DeepSeek's Think Max prefix as published (the full text is longer); kept short so the embedded
# tiny model does not spend most of its context on it. A recipe for a real model can use any system prompt on top.
THINK_MAX_PREFIX = ("Reasoning Effort: Absolute maximum with no shortcuts permitted. "
                    "You MUST be very thorough in your thinking.")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def prefill(mode: str) -> str:
    """What the assistant turn starts with, before the model writes anything."""
    return END_THINK if check_mode(mode) == "non_think" else THINK


def system_prompt(mode: str, system: str | None = None) -> str | None:
    """The system prompt for a mode: Think Max puts its dedicated prefix before the user's system prompt."""
    if check_mode(mode) == "think_max":
        return THINK_MAX_PREFIX + ("\n\n" + system if system else "")
    return system


# ------------------------------------------------------------------------------------------------ tools, calls
def render_tools(tools: list[dict]) -> str:
    """The tools section of the system prompt: ``## Tools`` then one line per tool, ``name(param: type, opt?: type)``
    and `` - description`` when it has one; a parameter whose schema is more than a bare ``{"type": ...}`` shows its
    schema as JSON. (V4 prints every schema as JSON, after a page of instructions: the five inventory tools' schemas
    alone take ~225 tokens of the embedded tokenizer, against ~60 here.)"""
    def kind(schema: dict) -> str:
        bare = len(schema) == 1 and isinstance(schema.get("type"), str)
        return schema["type"] if bare else json.dumps(schema, ensure_ascii=False)

    lines = ["## Tools"]
    for t in tools:
        f = _function(t)
        p = f.get("parameters") or {}
        req, props = p.get("required") or [], p.get("properties") or {}
        args = ", ".join(f"{k}{'' if k in req else '?'}: {kind(v)}" for k, v in props.items())
        lines.append(f"{f['name']}({args})" + (" - " + f["description"] if f.get("description") else ""))
    return "\n".join(lines)


def assistant_text(message: dict) -> str:
    """What an assistant message's turn holds after the prefill: its content, then (V4: after a blank line) the DSML
    block of its ``tool_calls``."""
    text = message.get("content") or ""
    if message.get("tool_calls"):
        text += "\n\n" + format_tool_calls(message["tool_calls"])
    return text


def tool_results(observations: list[str]) -> str:
    """The user-turn text carrying tool results, in call order."""
    return "\n\n".join(TOOL_RESULT + o + END_TOOL_RESULT for o in observations)


_ENTITY = {"<": "&lt;", '"': "&quot;"}
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS, key=len, reverse=True)))


def escape_specials(text: str) -> str:
    """``text`` with every special-token string defanged (its first character ``<`` -> ``&lt;``, ``"`` ->
    ``&quot;``), for tool output placed in the context:
    a program that prints ``<|end|>`` or ``</tool_result>`` cannot close its turn or forge one."""
    return _SPECIAL_RE.sub(lambda m: _ENTITY[m.group(0)[0]] + m.group(0)[1:], text)


# ------------------------------------------------------------------------------------------------ rendering
def _conversation_tools(messages: list[dict], tools: list[dict] | None) -> list[dict] | None:
    if tools:
        return tools
    sys_msgs = [m for m in messages if m["role"] == "system"]
    return (sys_msgs[0].get("tools") or None) if sys_msgs else None


def segments(messages: list[dict], mode: str, add_generation_prompt: bool = True,
             tools: list[dict] | None = None) -> list[tuple[str, bool]]:
    """The conversation as ``(text, written_by_the_model)`` pieces; every boundary falls on a special token, so
    tokenizing piece by piece gives the ids of the whole text. ``render_prompt`` joins them; ``rollout.encoding``
    tokenizes them. The first system message is the system prompt (others are ignored)."""
    check_mode(mode)
    out = [(BOS, False)]
    sys_msgs = [m for m in messages if m["role"] == "system"]
    tools = _conversation_tools(messages, tools)
    sys_text = (sys_msgs[0].get("content") or "") if sys_msgs else ""
    if tools:
        sys_text = (sys_text + "\n\n" if sys_text else "") + render_tools(tools)
    sys_text = system_prompt(mode, sys_text or None)
    if sys_text:
        out.append((SYSTEM + sys_text + END, False))
    agentic = bool(tools) or any(m["role"] == "tool" or (m["role"] == "assistant" and m.get("tool_calls"))
                                 for m in messages)
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    pre = prefill(mode)
    roles = [m["role"] for m in messages]
    for i, m in enumerate(messages):
        prev = roles[i - 1] if i else None
        nxt = roles[i + 1] if i + 1 < len(roles) else None
        if m["role"] == "user":
            out.append((("\n\n" if prev == "tool" else USER) + (m.get("content") or "") + END, False))
        elif m["role"] == "tool":
            text = ("\n\n" if prev == "tool" else USER) + TOOL_RESULT + (m.get("content") or "") + END_TOOL_RESULT
            out.append((text + ("" if nxt in ("tool", "user") else END), False))
        elif m["role"] == "assistant":
            body = assistant_text(m)
            if mode != "non_think" and not agentic and i < last_user:   # V4: earlier turns lose their reasoning
                out += [(ASSISTANT + END_THINK, False), (body.split(END_THINK)[-1] + END, True)]
            else:
                out += [(ASSISTANT + pre, False), (body + END, True)]
    if add_generation_prompt:
        out.append((ASSISTANT + pre, False))
    # a tool run followed by a user message is one turn: merge the pieces so each piece ends on a special token
    merged: list[tuple[str, bool]] = []
    for text, own in out:
        if merged and not own and not merged[-1][1] and not merged[-1][0].endswith((END, BOS)):
            merged[-1] = (merged[-1][0] + text, False)
        else:
            merged.append((text, own))
    return merged


def render_prompt(messages: list[dict], mode: str, add_generation_prompt: bool = True,
                  tools: list[dict] | None = None) -> str:
    """Render messages exactly as the tokenizer's chat template does (``CHAT_TEMPLATE``)."""
    return "".join(text for text, _ in segments(messages, mode, add_generation_prompt, tools))


def split_reasoning(completion: str, mode: str) -> tuple[str, str, bool]:
    """Split a completion (the text after the prefill) into (reasoning, answer, format_ok).

    Think modes: the completion must close its reasoning with exactly one ``</think>`` and open no new ``<think>``.
    Non-think: the prefill already closed the reasoning, so the completion must hold no think tags at all.
    """
    if check_mode(mode) == "non_think":
        ok = THINK not in completion and END_THINK not in completion
        return "", completion.strip(), ok
    if completion.count(END_THINK) != 1 or THINK in completion:
        # Strip everything up to the last </think> anyway, so a verifier never sees reasoning as the answer.
        idx = completion.rfind(END_THINK)
        return completion[: max(idx, 0)], completion[idx + len(END_THINK):].strip() if idx >= 0 else "", False
    reasoning, answer = completion.split(END_THINK, 1)
    return reasoning.strip(), answer.strip(), True


def _q(s: str) -> str:
    """A Jinja string literal."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


CHAT_TEMPLATE = (
    "{%- set mode = mode if mode is defined else 'think_high' -%}"
    "{{- " + _q(BOS) + " -}}"
    "{%- set ns = namespace(sys='', seen=false, tools=none, agentic=false, last_user=-1) -%}"
    "{%- if tools is defined and tools -%}{%- set ns.tools = tools -%}{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' and not ns.seen -%}{%- set ns.seen = true -%}{%- set ns.sys = m.content or '' -%}"
    "{%- if ns.tools is none and m.tools -%}{%- set ns.tools = m.tools -%}{%- endif -%}{%- endif -%}"
    "{%- if m.role == 'tool' or (m.role == 'assistant' and m.tool_calls) -%}{%- set ns.agentic = true -%}{%- endif -%}"
    "{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    # the tools section: one line per tool (render_tools)
    "{%- if ns.tools -%}{%- set ns.agentic = true -%}"
    "{%- set ts = namespace(text='## Tools') -%}"
    "{%- for t in ns.tools -%}{%- set f = t.function if t.function is defined else t -%}"
    "{%- set p = f.parameters if f.parameters else {} -%}"
    "{%- set req = p.required if p.required else [] -%}{%- set props = p.properties if p.properties else {} -%}"
    "{%- set ts.text = ts.text ~ '\\n' ~ f.name ~ '(' -%}"
    "{%- for k, v in props.items() -%}"
    "{%- set ts.text = ts.text ~ (', ' if not loop.first else '') ~ k ~ ('' if k in req else '?') ~ ': ' ~ "
    "(v.type if (v|length == 1 and v.type is string) else v|tojson) -%}"
    "{%- endfor -%}"
    "{%- set ts.text = ts.text ~ ')' ~ ((' - ' ~ f.description) if f.description else '') -%}"
    "{%- endfor -%}"
    "{%- set ns.sys = ((ns.sys ~ '\\n\\n') if ns.sys else '') ~ ts.text -%}"
    "{%- endif -%}"
    "{%- if mode == 'think_max' -%}"
    "{%- set ns.sys = " + _q(THINK_MAX_PREFIX) + " ~ (('\\n\\n' ~ ns.sys) if ns.sys else '') -%}{%- endif -%}"
    "{%- if ns.sys -%}{{- " + _q(SYSTEM) + " ~ ns.sys ~ " + _q(END) + " -}}{%- endif -%}"
    "{%- set pre = " + _q(END_THINK) + " if mode == 'non_think' else " + _q(THINK) + " -%}"
    "{%- for m in messages -%}"
    "{%- set prev = messages[loop.index0 - 1].role if not loop.first else '' -%}"
    "{%- set nxt = messages[loop.index0 + 1].role if not loop.last else '' -%}"
    "{%- if m.role == 'user' -%}"
    "{{- ('\\n\\n' if prev == 'tool' else " + _q(USER) + ") ~ (m.content or '') ~ " + _q(END) + " -}}"
    "{%- elif m.role == 'tool' -%}"
    "{{- ('\\n\\n' if prev == 'tool' else " + _q(USER) + ") ~ " + _q(TOOL_RESULT) + " ~ (m.content or '') ~ "
    + _q(END_TOOL_RESULT) + " -}}"
    "{%- if nxt != 'tool' and nxt != 'user' -%}{{- " + _q(END) + " -}}{%- endif -%}"
    "{%- elif m.role == 'assistant' -%}"
    "{%- set a = namespace(c=(m.content or '')) -%}"
    "{%- if m.tool_calls -%}"
    "{%- set a.c = a.c ~ '\\n\\n' ~ " + _q(TOOL_CALLS) + " ~ '\\n' -%}"
    "{%- for tc in m.tool_calls -%}{%- set f = tc.function if tc.function is defined else tc -%}"
    "{%- set a.c = a.c ~ ('\\n' if not loop.first else '') ~ " + _q(INVOKE) + " ~ f.name ~ '\">\\n' -%}"
    "{%- for k, v in f.arguments.items() -%}"
    "{%- set a.c = a.c ~ ('\\n' if not loop.first else '') ~ " + _q(PARAM) + " ~ k ~ "
    "(" + _q(STRING_VALUE) + " ~ v if v is string else " + _q(JSON_VALUE) + " ~ v|tojson) ~ " + _q(END_PARAM) + " -%}"
    "{%- endfor -%}"
    "{%- set a.c = a.c ~ '\\n' ~ " + _q(END_INVOKE) + " -%}"
    "{%- endfor -%}"
    "{%- set a.c = a.c ~ '\\n' ~ " + _q(END_TOOL_CALLS) + " -%}"
    "{%- endif -%}"
    "{%- if mode != 'non_think' and not ns.agentic and loop.index0 < ns.last_user -%}"
    "{{- " + _q(ASSISTANT + END_THINK) + " ~ a.c.split(" + _q(END_THINK) + ")[-1] ~ " + _q(END) + " -}}"
    "{%- else -%}{{- " + _q(ASSISTANT) + " ~ pre ~ a.c ~ " + _q(END) + " -}}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- " + _q(ASSISTANT) + " ~ pre -}}{%- endif -%}"
)


__all__ = ["ASSISTANT", "BOS", "CHAT_TEMPLATE", "DSML", "END", "END_INVOKE", "END_PARAM", "END_THINK", "END_TOOL_CALLS",
           "END_TOOL_RESULT", "INVOKE", "JSON_VALUE", "MAX_CALLS_PER_TURN", "MAX_CALL_CHARS", "MAX_NAME_CHARS", "MODES",
           "PAD", "PARAM", "SPECIAL_TOKENS", "STRING_VALUE", "SYSTEM", "THINK", "THINK_MAX_PREFIX", "TOOL_CALLS",
           "TOOL_RESULT", "ToolCall", "USER", "assistant_text", "check_mode", "escape_specials", "format_tool_call",
           "format_tool_calls", "parse_tool_calls", "prefill", "render_prompt", "render_tools", "segments",
           "split_reasoning", "system_prompt", "tool_results"]
