"""Agent: multi-turn tasks solved by calling the tools of a deterministic inventory environment.

Fields (JSON strings, so every row has the same schema): ``initial_state``, ``reference_actions`` (the calls that
solve the task), ``reference_state`` (the state after them); ``answer`` is the final answer the reply must contain
(empty when the task has none); ``max_turns`` caps the episode.
"""
from __future__ import annotations

import json
import random

from ..envs import InventoryEnv, ToolCall, format_tool_call, replay

SYSTEM = ("You manage a shop inventory. Tools: get_stock(item), add_stock(item, qty), remove_stock(item, qty), "
          "set_price(item, price), get_price(item). Call one tool per turn as <tool_call>JSON</tool_call>.")
ITEMS = ["apple", "pear", "plum", "fig", "lime", "kiwi", "melon", "grape", "peach", "mango"]


def sample(rng: random.Random) -> dict:
    items = rng.sample(ITEMS, 3)
    state = {"stock": {i: rng.randint(0, 9) for i in items}, "price": {items[0]: rng.randint(1, 9)}}
    it = rng.choice(items)
    kind = rng.choice(["add_report", "remove_report", "set_price", "report"])
    q = rng.randint(1, 9)
    if kind == "add_report":
        goal = f"Add {q} {it} to the stock, then tell me how many {it} there are."
        actions = [{"name": "add_stock", "arguments": {"item": it, "qty": q}}]
        answer = str(state["stock"][it] + q)
    elif kind == "remove_report":
        q = rng.randint(0, state["stock"][it]) if state["stock"][it] else 0
        goal = f"Remove {q} {it} from the stock, then tell me how many {it} are left."
        actions = [{"name": "remove_stock", "arguments": {"item": it, "qty": q}}]
        answer = str(state["stock"][it] - q)
    elif kind == "set_price":
        goal = f"Set the price of {it} to {q}."
        actions = [{"name": "set_price", "arguments": {"item": it, "price": q}}]
        answer = ""
    else:
        goal = f"How many {it} are in stock?"
        actions = []
        answer = str(state["stock"][it])
    if answer:  # the agent must look the number up, not guess it
        actions = actions + [{"name": "get_stock", "arguments": {"item": it}}]
    final = replay(state, actions)
    return {
        "prompt": goal,
        "initial_state": json.dumps(state, sort_keys=True),
        "reference_actions": json.dumps(actions),
        "reference_state": json.dumps(final, sort_keys=True),
        "answer": answer,
        "max_turns": 4,
    }


def demonstration(s: dict, mode: str) -> list[dict]:
    """The reference episode: one tool call per assistant turn, observations from the real environment."""
    env = InventoryEnv.from_state(json.loads(s["initial_state"]))
    msgs = [{"role": "user", "content": s["prompt"]}]
    for a in json.loads(s["reference_actions"]):
        obs = env.call(ToolCall(a["name"], a["arguments"]))
        why = {"non_think": None, "think_high": f"I need {a['name']}.",
               "think_max": f"The task needs {a['name']} on {a['arguments']['item']}. I call it and read the result."}[mode]
        call = format_tool_call(a["name"], a["arguments"])
        msgs += [{"role": "assistant", "content": (why + "</think>" + call) if why else call},
                 {"role": "tool", "content": obs}]
    final = f"Done. The answer is {s['answer']}." if s["answer"] else "Done."
    why = {"non_think": None, "think_high": "I have what I need.",
           "think_max": "All calls succeeded and I have the result. I report it."}[mode]
    msgs.append({"role": "assistant", "content": (why + "</think>" + final) if why else final})
    return msgs
