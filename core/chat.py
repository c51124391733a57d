"""The chat format every stage shares: special tokens, the three reasoning modes, and the mode system prompts.

DeepSeek's encoding: a non-think assistant turn is prefilled with ``</think>`` (empty reasoning), a think turn with
``<think>``; Think Max additionally puts a dedicated prefix before the system prompt. ``CHAT_TEMPLATE`` (the Jinja
template every tokenizer of a run carries) renders exactly these strings; ``render_prompt`` is its pure-Python twin for
code that has no tokenizer at hand, and a test keeps the two in step. This module is the one place the protocol lives.
"""
from __future__ import annotations

MODES = ("non_think", "think_high", "think_max")

BOS = "<|bos|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
TOOL = "<|tool|>"
END = "<|end|>"
PAD = "<|pad|>"
THINK = "<think>"
END_THINK = "</think>"
TOOL_CALL = "<tool_call>"
END_TOOL_CALL = "</tool_call>"
SPECIAL_TOKENS = [PAD, BOS, SYSTEM, USER, ASSISTANT, TOOL, END, THINK, END_THINK, TOOL_CALL, END_TOOL_CALL]

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


def render_prompt(messages: list[dict], mode: str, add_generation_prompt: bool = True) -> str:
    """Render messages exactly as the tokenizer's chat template does (see pipeline/bootstrap.py)."""
    out = [BOS]
    sys_msgs = [m for m in messages if m["role"] == "system"]
    sys_text = system_prompt(mode, sys_msgs[0]["content"] if sys_msgs else None)
    if sys_text:
        out.append(SYSTEM + sys_text + END)
    for m in messages:
        if m["role"] == "user":
            out.append(USER + m["content"] + END)
        elif m["role"] == "assistant":
            out.append(ASSISTANT + prefill(mode) + m["content"] + END)
        elif m["role"] == "tool":
            out.append(TOOL + m["content"] + END)
    if add_generation_prompt:
        out.append(ASSISTANT + prefill(mode))
    return "".join(out)


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


CHAT_TEMPLATE = (
    "{%- set mode = mode if mode is defined else 'think_high' -%}"
    "{{- '" + BOS + "' -}}"
    "{%- set ns = namespace(sys='') -%}"
    "{%- for m in messages -%}{%- if m.role == 'system' and not ns.sys -%}{%- set ns.sys = m.content -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if mode == 'think_max' -%}"
    "{%- set ns.sys = '" + THINK_MAX_PREFIX + "' ~ (('\\n\\n' ~ ns.sys) if ns.sys else '') -%}{%- endif -%}"
    "{%- if ns.sys -%}{{- '<|system|>' ~ ns.sys ~ '<|end|>' -}}{%- endif -%}"
    "{%- set pre = '</think>' if mode == 'non_think' else '<think>' -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}{{- '<|user|>' ~ m.content ~ '<|end|>' -}}"
    "{%- elif m.role == 'assistant' -%}{{- '<|assistant|>' ~ pre ~ m.content ~ '<|end|>' -}}"
    "{%- elif m.role == 'tool' -%}{{- '<|tool|>' ~ m.content ~ '<|end|>' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' ~ pre -}}{%- endif -%}"
)
