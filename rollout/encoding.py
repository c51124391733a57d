"""Token-level chat encoding, segment by segment, so conversations grow append-only.

Each message becomes one segment of token ids (its role marker, the mode's prefill for assistant turns, the
content, ``<|end|>``); a conversation is the concatenation. Earlier turns are never re-tokenized, and the loss mask
marks exactly the tokens the model wrote (assistant content and its ``<|end|>``), never prompts, prefills or tool
observations. The strings come from ``core.chat`` and match the tokenizer's chat template.
"""
from __future__ import annotations

from core.chat import ASSISTANT, BOS, END, SYSTEM, TOOL, USER, prefill, system_prompt


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def encode_prompt(tok, messages: list[dict], mode: str) -> list[int]:
    """Token ids of ``messages`` plus the generation prompt (assistant marker + the mode's prefill)."""
    ids, _ = encode_conversation(tok, messages, mode)
    return ids + generation_prompt(tok, mode)


def generation_prompt(tok, mode: str) -> list[int]:
    return _ids(tok, ASSISTANT + prefill(mode))


def encode_segment(tok, role: str, content: str, mode: str) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of one message."""
    if role == "assistant":
        head = _ids(tok, ASSISTANT + prefill(mode))
        body = _ids(tok, content + END)
        return head + body, [0] * len(head) + [1] * len(body)
    marker = {"user": USER, "tool": TOOL, "system": SYSTEM}[role]
    ids = _ids(tok, marker + content + END)
    return ids, [0] * len(ids)


def encode_conversation(tok, messages: list[dict], mode: str) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a whole conversation; the system prompt gets the mode's prefix (Think Max)."""
    ids = _ids(tok, BOS)
    mask = [0] * len(ids)
    sys_msgs = [m for m in messages if m["role"] == "system"]
    sys_text = system_prompt(mode, sys_msgs[0]["content"] if sys_msgs else None)
    if sys_text:
        s_ids, s_mask = encode_segment(tok, "system", sys_text, mode)
        ids, mask = ids + s_ids, mask + s_mask
    for m in messages:
        if m["role"] == "system":
            continue
        s_ids, s_mask = encode_segment(tok, m["role"], m["content"], mode)
        ids, mask = ids + s_ids, mask + s_mask
    return ids, mask
