"""Token-level chat encoding, segment by segment, so conversations grow append-only.

``core.chat.segments`` cuts a conversation into pieces that each end on a special token (the BOS, the system prompt,
each user turn -- tool results included --, each assistant turn's marker + prefill, and its body + ``<|end|>``); each
piece is tokenized on its own and a conversation is the concatenation, which equals the tokenization of the whole
rendered text (special tokens split it there anyway). Earlier turns are never re-tokenized, and the loss mask marks
exactly the tokens the model wrote (assistant content, its tool calls and its ``<|end|>``), never prompts, prefills
or tool results. The strings come from ``core.chat`` and match the tokenizer's chat template.
"""
from __future__ import annotations

from core.chat import ASSISTANT, END, USER, prefill, segments, tool_results


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def encode_prompt(tok, messages: list[dict], mode: str, tools: list[dict] | None = None) -> list[int]:
    """Token ids of ``messages`` plus the generation prompt (assistant marker + the mode's prefill)."""
    ids, _ = encode_conversation(tok, messages, mode, tools)
    return ids + generation_prompt(tok, mode)


def generation_prompt(tok, mode: str) -> list[int]:
    return _ids(tok, ASSISTANT + prefill(mode))


def encode_tool_results(tok, observations: list[str]) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of the user turn that returns one turn's tool results, in call order (all masked)."""
    ids = _ids(tok, USER + tool_results(observations) + END)
    return ids, [0] * len(ids)


def encode_conversation(tok, messages: list[dict], mode: str,
                        tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a whole conversation, exactly ``render_prompt(messages, mode, False, tools)`` tokenized;
    the system prompt gets the mode's prefix (Think Max) and the tools section."""
    ids, mask = [], []
    for text, own in segments(messages, mode, add_generation_prompt=False, tools=tools):
        piece = _ids(tok, text)
        ids += piece
        mask += [int(own)] * len(piece)
    return ids, mask
