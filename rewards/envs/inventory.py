"""The inventory environment: a shop's stock counts and prices, every tool deterministic.

The state is plain data (``{"stock": {item: n}, "price": {item: n}}``); the verifier replays the calls that counted on
a fresh copy of ``initial_state`` -- the observations in a transcript are never trusted -- and compares the final state
with ``reference_state``; the final answer must contain ``answer`` as a whole token when the row has one.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field

from core.chat import ToolCall

from ..verdict import Verdict
from .base import Trace, register_env, tool_schema

MAX_ITEM_CHARS = 64
MAX_ITEMS = 256


def answer_matches(final: str, answer: str) -> bool:
    """``answer`` appears in ``final`` as a whole token (``2`` does not match inside ``12`` or ``2.5``)."""
    return re.search(r"(?<![\w.])" + re.escape(answer) + r"(?![\w]|\.\d)", final) is not None


def _loads(value):
    return json.loads(value) if isinstance(value, str) else value


@register_env
@dataclass
class InventoryEnv:
    state: dict = field(default_factory=lambda: {"stock": {}, "price": {}})

    name = "inventory"
    intro = "You manage a shop inventory."
    stop_after_calls = False
    blocking = False
    TOOLS = {                       # name -> parameters (all required)
        "get_stock": {"item": "string"},
        "add_stock": {"item": "string", "qty": "integer"},
        "remove_stock": {"item": "string", "qty": "integer"},
        "set_price": {"item": "string", "price": "integer"},
        "get_price": {"item": "string"},
    }

    @classmethod
    def from_state(cls, state: dict) -> "InventoryEnv":
        return cls(copy.deepcopy(state))

    def tools(self) -> list[dict]:
        return [tool_schema(n, p) for n, p in self.TOOLS.items()]

    def reset(self, row: dict) -> dict:
        self.state = copy.deepcopy(_loads(row["initial_state"]))
        return self.state

    def step(self, call: ToolCall) -> str:
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

    call = step     # the name callers used before the interface

    def verify(self, trace: Trace, row: dict) -> Verdict:
        env = InventoryEnv()
        env.reset(row)
        observations = [env.step(c) for c in trace.all_calls()]
        reference = _loads(row["reference_state"])
        answer = str(row.get("answer") or "")
        checks = []
        if trace.final is None:
            checks.append("no_final_answer_within_turn_cap")
        if json.dumps(env.state, sort_keys=True) != json.dumps(reference, sort_keys=True):
            checks.append("final_state_mismatch")
        if answer and not (trace.final is not None and answer_matches(trace.final, answer)):
            checks.append("answer_mismatch")
        return Verdict(0.0 if checks else 1.0, {"failed_checks": checks,
                                                "observations": [o[:200] for o in observations]})


def replay(initial_state: dict, actions: list[dict]) -> dict:
    """Final state after running ``actions`` (``{"name", "arguments"}``) on a fresh copy of ``initial_state``."""
    env = InventoryEnv.from_state(initial_state)
    for a in actions:
        env.step(ToolCall(a["name"], a["arguments"]))
    return env.state
