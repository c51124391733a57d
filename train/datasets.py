"""SFT conversations from rows in TRL's dataset formats, in the project's chat form (``core.chat``).

A row that ``rewards.tasks.rows.load_rows`` read carries ``example``: the row in one of TRL's formats --
``{"messages"}``, ``{"prompt", "completion"}`` (each a string or a list of messages) or ``{"prompt"}`` -- plus
TRL's optional per-row ``tools``. TRL's data utilities read it: ``trl.data_utils.is_conversational`` tells a
conversational column from a plain string (a plain prompt becomes a user turn, a plain completion an assistant turn),
and ``trl.chat_template_utils._validate_tool_calls`` checks ``tool_calls``.

What TRL does not cover is here: reasoning (``reasoning_content`` -- or ``thinking`` -- on an assistant message, or
a ``<think>...</think>`` block opening its content) becomes the project's "reasoning</think>answer" form
(``split_think``); tool calls are rendered by the chat protocol's own function (``assistant_body``: the format is
never written here); the system prompt is the row's own, else the domain's (``_system``; an agent row's also lists
its environment's tools); TRL's ``tools`` ride on the system message, where the chat protocol renders them.

Modes: a row with reasoning (in any assistant turn) trains the think modes; a row without trains ``non_think``.
With ``sft_modes: all`` every row trains every mode: a non_think example drops the reasoning, a think example of a
row without reasoning has an empty one. ``train.data.sft_examples`` tokenizes the result segment by segment
(``rollout.encoding``), so the loss mask is the assistant tokens only and the mode decides the prefill.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from trl.chat_template_utils import _validate_tool_calls
from trl.data_utils import is_conversational

from core import chat
from core.chat import END_THINK, MODES, THINK
from rewards.tasks import system_and_tools, system_prompt
from rewards.tasks.rows import Bad, RowError, row_error, text_of, tool_call_of


@dataclass
class Turn:
    role: str
    content: str            # the answer part, tool calls rendered
    reasoning: str = ""     # assistant turns only


@dataclass
class Conversation:
    turns: list[Turn]
    system: str | None
    tools: list[dict] | None = None     # TRL's per-row tool schemas: a ``tools`` key on the system message

    @property
    def has_reasoning(self) -> bool:
        return any(t.reasoning for t in self.turns)

    def modes(self, modes: list[str], policy: str) -> list[str]:
        """The modes (among ``modes``) this conversation trains under ``policy`` (``by_reasoning`` | ``all``)."""
        if policy == "all":
            return list(modes)
        if self.has_reasoning:
            return [m for m in modes if m != "non_think"]
        return [m for m in modes if m == "non_think"]

    def messages(self, mode: str) -> list[dict]:
        """The messages ``rollout.encoding.encode_conversation`` takes: think modes "reasoning</think>answer" for
        assistant turns (the prefill ``<think>`` comes from the mode), non_think the answer alone."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        out = [{"role": "system", "content": self.system or ""}] if self.system or self.tools else []
        if self.tools:
            out[0]["tools"] = self.tools
        for t in self.turns:
            c = t.content
            if t.role == "assistant" and mode != "non_think":
                c = t.reasoning + END_THINK + c
            out.append({"role": t.role, "content": c})
        return out


def split_think(content: str, field: str) -> tuple[str, str]:
    """(reasoning, answer) of an assistant content with an optional ``<think>...</think>`` block at its start (or
    only the closing tag, as a template that prefills ``<think>`` leaves it)."""
    opens, closes = content.count(THINK), content.count(END_THINK)
    if not opens and not closes:
        return "", content
    if opens > 1 or closes != 1:
        raise Bad(field, f"expected one <think>...</think> block, found {opens} <think> and {closes} </think>")
    head, answer = content.split(END_THINK, 1)
    if opens:
        before, reasoning = head.split(THINK, 1)
        if before.strip():
            raise Bad(field, "text before <think>: the reasoning block must open the message")
    else:
        reasoning = head
    return reasoning.strip(), answer.strip()


def assistant_body(answer: str, calls: list[dict]) -> str:
    """An assistant turn's text after its reasoning: the answer, then ``calls`` (``{name, arguments}``) rendered by
    the chat protocol (``core.chat.assistant_text``)."""
    if not calls:
        return answer
    return chat.assistant_text({"role": "assistant", "content": answer, "tool_calls": calls})


def _assistant(m: dict, field: str) -> Turn:
    content = text_of(m.get("content"), f"{field}.content")
    rc = m.get("reasoning_content")
    if rc is None:
        rc = m.get("thinking")
    if rc is not None and not isinstance(rc, str):
        raise Bad(f"{field}.reasoning_content", f"expected a string, got {type(rc).__name__}")
    reasoning, answer = split_think(content, f"{field}.content")
    if rc and (THINK in content or END_THINK in content):
        raise Bad(f"{field}", "both reasoning_content and a think block in content")
    if rc:
        reasoning = rc.strip()
    calls = m.get("tool_calls")
    if calls:
        try:
            _validate_tool_calls(calls)                   # TRL's check (normalizes missing arguments to {})
        except ValueError as e:
            raise Bad(f"{field}.tool_calls", str(e).rstrip(".")) from None
        answer = assistant_body(answer, [tool_call_of(c, f"{field}.tool_calls[{k}]") for k, c in enumerate(calls)])
    if not answer and not reasoning:
        raise Bad(f"{field}", "an assistant message with no content, reasoning or tool calls")
    return Turn("assistant", answer, reasoning)


def _turns(messages: list[dict], field: str) -> tuple[list[Turn], str | None]:
    turns, system = [], None
    for j, m in enumerate(messages):
        f = f"{field}[{j}]"
        role = m.get("role")
        if role == "system":
            if system is not None or turns:
                raise Bad(f, "a system message after the first turn (the chat format has one, first)")
            system = text_of(m.get("content"), f"{f}.content")
        elif role == "assistant":
            turns.append(_assistant(m, f))
        elif role in ("user", "tool"):
            turns.append(Turn(role, text_of(m.get("content"), f"{f}.content")))
        else:
            raise Bad(f"{f}.role", f"role {role!r}; expected one of system, user, assistant, tool")
    return turns, system


def conversation(sample: dict) -> Conversation:
    """The SFT conversation of a ``load_rows`` sample; a bad row raises :class:`RowError` (one line)."""
    ex = sample["example"]
    try:
        if "messages" in ex:
            if not is_conversational({"messages": ex["messages"]}):
                raise Bad("messages", "not a conversation (a list of {role, content} messages)")
            turns, system = _turns(ex["messages"], "messages")
        elif "completion" in ex:
            p, c = ex["prompt"], ex["completion"]
            prompt = p if is_conversational({"prompt": p}) else [{"role": "user", "content": p}]
            completion = c if is_conversational({"completion": c}) else [{"role": "assistant", "content": c}]
            turns, system = _turns(prompt, "prompt")
            more, _ = _turns(completion, "completion")
            turns += more
        else:
            raise Bad("format", "prompt_only rows have no demonstration to train SFT on (give messages or "
                                "prompt_completion rows for SFT)")
    except Bad as e:
        raise row_error(sample, e.field, e.problem) from None
    if not any(t.role == "assistant" for t in turns):
        raise row_error(sample, "messages", "no assistant message")
    if sample["domain"] == "agent":    # the row's environment gives the tools, as in the prompt RL stages send
        return Conversation(turns, *system_and_tools(sample, system))
    return Conversation(turns, system_prompt(sample, system), _tools(sample, ex.get("tools")))


def _tools(sample: dict, tools) -> list[dict] | None:
    if isinstance(tools, str):                          # TRL's SFTTrainer reads a JSON string as well
        try:
            tools = json.loads(tools)
        except ValueError:
            raise row_error(sample, "tools", "not valid JSON") from None
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise row_error(sample, "tools", "expected a list of tool schemas (objects)")
    return tools


def sft_conversations(samples: list[dict], modes: list[str]) -> list[tuple[str, list[dict]]]:
    """(mode, messages) of every dataset row in every mode it trains (its ``origin.sft_modes`` policy)."""
    out = []
    for s in samples:
        conv = conversation(s)
        policy = (s.get("origin") or {}).get("sft_modes", "by_reasoning")
        out += [(m, conv.messages(m)) for m in conv.modes(modes, policy)]
    if samples and not out:
        o = samples[0].get("origin") or {}
        raise RowError(f"tasks.{samples[0].get('domain')}: {o.get('source', '?')}: no row trains the modes "
                       f"{', '.join(modes)} (rows with reasoning train the think modes, rows without non_think; "
                       f"sft_modes: all trains every row in every mode)")
    return out


__all__ = ["Conversation", "Turn", "conversation", "sft_conversations", "split_think", "assistant_body"]
