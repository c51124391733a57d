"""Deterministic tool environments for the agent domain, and the tool-call format.

A tool call is JSON inside ``<tool_call>…</tool_call>``: ``{"name": "add_stock", "arguments": {"item": "apple",
"qty": 3}}``. It is parsed with ``json.loads`` (never ``eval``); a malformed call or an unknown tool yields an error
observation, never an exception. Environments are plain data (``state`` is JSON-serialisable) so a verifier can
replay reference actions on a fresh copy and compare final states.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field

from core.chat import END_TOOL_CALL, TOOL_CALL

_CALL_RE = re.compile(re.escape(TOOL_CALL) + r"(.*?)" + re.escape(END_TOOL_CALL), re.S)  # kept for callers
MAX_CALLS_PER_TURN = 8      # more calls in one turn are answered with an error observation each
MAX_CALL_CHARS = 4096       # a call body longer than this is malformed (no JSON parse of megabytes)
MAX_ITEM_CHARS = 64
MAX_ITEMS = 256


def _call_bodies(text: str) -> tuple[list[str], bool]:
    """Bodies of ``<tool_call>…</tool_call>`` in order (linear scan) and whether an unclosed one remains."""
    bodies, pos = [], 0
    while True:
        i = text.find(TOOL_CALL, pos)
        if i < 0:
            return bodies, False
        j = text.find(END_TOOL_CALL, i + len(TOOL_CALL))
        if j < 0:
            return bodies, True
        bodies.append(text[i + len(TOOL_CALL):j])
        pos = j + len(END_TOOL_CALL)


@dataclass
class ToolCall:
    name: str | None
    arguments: dict
    error: str | None = None


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every ``<tool_call>`` block in ``text``, in order; malformed ones carry ``error``."""
    calls = []
    bodies, unclosed = _call_bodies(text)
    for n, raw in enumerate(bodies):
        if n >= MAX_CALLS_PER_TURN:
            calls.append(ToolCall(None, {}, f"too many tool calls in one turn (max {MAX_CALLS_PER_TURN})"))
            continue
        if len(raw) > MAX_CALL_CHARS:
            calls.append(ToolCall(None, {}, f"malformed tool call: longer than {MAX_CALL_CHARS} characters"))
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, int-digit limit, too deep
            calls.append(ToolCall(None, {}, f"malformed tool call: {e.__class__.__name__}"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            calls.append(ToolCall(None, {}, "malformed tool call: expected an object with a string 'name'"))
            continue
        args = obj.get("arguments", {})
        if not isinstance(args, dict):
            calls.append(ToolCall(obj["name"], {}, "malformed tool call: 'arguments' must be an object"))
            continue
        calls.append(ToolCall(obj["name"], args))
    if unclosed:
        calls.append(ToolCall(None, {}, "malformed tool call: unclosed <tool_call>"))
    return calls


def format_tool_call(name: str, arguments: dict) -> str:
    return TOOL_CALL + json.dumps({"name": name, "arguments": arguments}) + END_TOOL_CALL


@dataclass
class InventoryEnv:
    """A shop inventory: stock counts and prices per item. All tools are deterministic."""

    state: dict = field(default_factory=lambda: {"stock": {}, "price": {}})

    TOOLS = {
        "get_stock": ("item",),
        "add_stock": ("item", "qty"),
        "remove_stock": ("item", "qty"),
        "set_price": ("item", "price"),
        "get_price": ("item",),
    }

    @classmethod
    def from_state(cls, state: dict) -> "InventoryEnv":
        return cls(copy.deepcopy(state))

    def call(self, call: ToolCall) -> str:
        """Execute one call and return the observation text (errors are observations too)."""
        if call.error:
            return f"error: {call.error}"
        if call.name not in self.TOOLS:
            return f"error: unknown tool {call.name!r}"
        want = self.TOOLS[call.name]
        if set(call.arguments) != set(want):
            return f"error: {call.name} takes arguments {', '.join(want)}"
        item = call.arguments["item"]
        if not isinstance(item, str) or not item or len(item) > MAX_ITEM_CHARS:
            return f"error: item must be a non-empty string of at most {MAX_ITEM_CHARS} characters"
        stock, price = self.state["stock"], self.state["price"]
        if call.name == "get_stock":
            return str(stock.get(item, 0))
        if call.name == "get_price":
            return str(price[item]) if item in price else f"error: no price for {item}"
        num = call.arguments.get("qty", call.arguments.get("price"))
        if not isinstance(num, int) or isinstance(num, bool) or num < 0 or num > 10**6:
            return "error: quantity must be a non-negative integer"
        known = item in stock or item in price
        if not known and call.name in ("add_stock", "set_price") and len(set(stock) | set(price)) >= MAX_ITEMS:
            return "error: too many items"
        if call.name == "add_stock":
            stock[item] = stock.get(item, 0) + num
            return f"ok: {item} stock is {stock[item]}"
        if call.name == "remove_stock":
            if stock.get(item, 0) < num:
                return f"error: only {stock.get(item, 0)} {item} in stock"
            if num:  # removing 0 of an item never stocked is a no-op, not a KeyError
                stock[item] = stock.get(item, 0) - num
            return f"ok: {item} stock is {stock.get(item, 0)}"
        price[item] = num
        return f"ok: {item} price is {num}"


def replay(initial_state: dict, actions: list[dict]) -> dict:
    """Final state after running ``actions`` (``{"name", "arguments"}``) on a fresh copy of ``initial_state``."""
    env = InventoryEnv.from_state(initial_state)
    for a in actions:
        env.call(ToolCall(a["name"], a["arguments"]))
    return env.state
