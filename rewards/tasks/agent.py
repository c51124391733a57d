"""Agent: multi-turn tasks solved by calling tools, in DeepSeek-V4's format (``core.chat``).

The generated tasks use the inventory environment (``rewards.envs.InventoryEnv``). Fields (JSON strings, so every
row has the same schema): ``env`` (``inventory``), ``initial_state``, ``reference_actions`` (the calls that solve the
task, in order), ``reference_rounds`` (how many of them each assistant turn makes: several calls in one turn share
one DSML block and get their results back together, in call order), ``reference_state`` (the state after them);
``answer`` is the final answer the reply must contain (empty when the task has none); ``max_turns`` caps the episode.

Rows of the other environments (``python_row``: a code task for a code agent with ``run_python``; ``bfcl_row``: a
BFCL question) get demonstrations too; their system prompt is ``system_for(row)`` (``SYSTEM`` is the inventory's).
"""
from __future__ import annotations

import json
import random

from core.chat import format_tool_calls

from ..envs import InventoryEnv, ToolCall, clean_observation, make_env, replay, system_text
from .bfcl import NO_CALL_ANSWER, _demo_calls

ITEMS = ["apple", "pear", "plum", "fig", "lime", "kiwi", "melon", "grape", "peach", "mango"]
KINDS = ["add_report", "remove_report", "set_price", "report", "add_and_price", "add_price_report"]
TWO_ITEM_KINDS = ["move_report", "add_remove_report", "price_pair"]
SYSTEM = system_text({"env": "inventory", "initial_state": {"stock": {}, "price": {}}})


def system_for(row: dict) -> str:
    """The system prompt of a row's episode: its environment's intro and tools (``SYSTEM`` for the inventory)."""
    return system_text(row)


def _call(name: str, **arguments) -> dict:
    return {"name": name, "arguments": arguments}


def sample(rng: random.Random, level: int = 1) -> dict:
    """One inventory task. ``level`` 1: the ``KINDS``; 2: those and ``TWO_ITEM_KINDS`` (half the draws), whose two
    calls carry two quantities, on two items or in two turns."""
    if level not in (1, 2):
        raise ValueError(f"level must be 1 or 2, got {level}")
    items = rng.sample(ITEMS, 3)
    state = {"stock": {i: rng.randint(0, 9) for i in items}, "price": {items[0]: rng.randint(1, 9)}}
    it = rng.choice(items)
    kind = rng.choice(TWO_ITEM_KINDS if level == 2 and rng.random() < 0.5 else KINDS)
    q = rng.randint(1, 9)
    rounds = None
    if kind in TWO_ITEM_KINDS:
        other, p = rng.choice([i for i in items if i != it]), rng.randint(1, 9)
        if kind == "move_report":               # two items, two calls in one turn; the answer in add_stock's result
            q = rng.randint(0, state["stock"][it])
            goal = f"Remove {q} {it} and add {p} {other}, then tell me how many {other} there are."
            actions = [_call("remove_stock", item=it, qty=q), _call("add_stock", item=other, qty=p)]
            answer, rounds = str(state["stock"][other] + p), [2]
        elif kind == "add_remove_report":       # one item, two turns: add, then remove from the new count
            p = rng.randint(0, state["stock"][it] + q)
            goal = f"Add {q} {it}, then remove {p} {it}, and tell me how many {it} are left."
            actions = [_call("add_stock", item=it, qty=q), _call("remove_stock", item=it, qty=p)]
            answer, rounds = str(state["stock"][it] + q - p), [1, 1]
        else:                                   # price_pair: two items, two calls in one turn, no answer
            goal = f"Set the price of {it} to {q} and the price of {other} to {p}."
            actions = [_call("set_price", item=it, price=q), _call("set_price", item=other, price=p)]
            answer, rounds = "", [2]
    elif kind == "add_report":
        goal = f"Add {q} {it} to the stock, then tell me how many {it} there are."
        actions = [_call("add_stock", item=it, qty=q)]
        answer = str(state["stock"][it] + q)
    elif kind == "remove_report":
        q = rng.randint(0, state["stock"][it]) if state["stock"][it] else 0
        goal = f"Remove {q} {it} from the stock, then tell me how many {it} are left."
        actions = [_call("remove_stock", item=it, qty=q)]
        answer = str(state["stock"][it] - q)
    elif kind == "set_price":
        goal = f"Set the price of {it} to {q}."
        actions = [_call("set_price", item=it, price=q)]
        answer = ""
    elif kind == "add_and_price":           # two calls in one turn
        other = rng.choice([i for i in items if i != it])
        p = rng.randint(1, 9)
        goal = f"Add {q} {it} and set the price of {other} to {p}."
        actions = [_call("add_stock", item=it, qty=q), _call("set_price", item=other, price=p)]
        answer, rounds = "", [2]
    elif kind == "add_price_report":        # two calls in one turn; the answer is in add_stock's result
        p = rng.randint(1, 9)
        goal = f"Add {q} {it} and set its price to {p}, then tell me how many {it} there are."
        actions = [_call("add_stock", item=it, qty=q), _call("set_price", item=it, price=p)]
        answer, rounds = str(state["stock"][it] + q), [2]
    else:
        goal = f"How many {it} are in stock?"
        actions = []
        answer = str(state["stock"][it])
    if answer and rounds is None:  # the agent must look the number up, not guess it
        actions = actions + [_call("get_stock", item=it)]
    rounds = rounds or [1] * len(actions)
    final = replay(state, actions)
    return {
        "prompt": goal,
        "env": "inventory",
        "initial_state": json.dumps(state, sort_keys=True),
        "reference_actions": json.dumps(actions),
        "reference_rounds": json.dumps(rounds),
        "reference_state": json.dumps(final, sort_keys=True),
        "answer": answer,
        "max_turns": 4,
    }


def _rounds(s: dict, actions: list[dict]) -> list[list[dict]]:
    sizes = json.loads(s["reference_rounds"]) if s.get("reference_rounds") else [1] * len(actions)
    out, k = [], 0
    for n in sizes:
        out.append(actions[k:k + n])
        k += n
    return out + [[a] for a in actions[k:]]


def _why(calls: list[dict], mode: str) -> str | None:
    names = " and ".join(c["name"] for c in calls)
    items = {c["arguments"].get("item") for c in calls}
    on = (f"{names} on {items.pop()}" if len(items) == 1 and None not in items else
          " and ".join(f"{c['name']} on {c['arguments']['item']}" if "item" in c["arguments"] else c["name"]
                       for c in calls))
    return {"non_think": None, "think_high": f"I need {names}.",
            "think_max": f"The task needs {on}. I call {'them' if len(calls) > 1 else 'it'} and read the result."}[mode]


def _turn(why: str | None, text: str) -> str:
    return (why + "</think>" + text) if why is not None else text


def _tool_turns(env, calls: list[dict], mode: str, why: str | None = None) -> list[dict]:
    """An assistant turn making ``calls`` in one DSML block, then one tool message per result (from ``env``)."""
    msgs = [{"role": "assistant", "content": _turn(why if why is not None else _why(calls, mode),
                                                   "\n\n" + format_tool_calls(calls))}]
    return msgs + [{"role": "tool", "content": clean_observation(env.step(ToolCall(c["name"], c["arguments"])))}
                   for c in calls]


def demonstration(s: dict, mode: str) -> list[dict]:
    """The reference episode: the reference calls (one DSML block per turn), results from the real environment."""
    env_name = s.get("env") or "inventory"
    if env_name == "python":
        return _python_demonstration(s, mode)
    if env_name == "bfcl":
        return _bfcl_demonstration(s, mode)
    env = InventoryEnv.from_state(json.loads(s["initial_state"]))
    msgs = [{"role": "user", "content": s["prompt"]}]
    for calls in _rounds(s, json.loads(s["reference_actions"])):
        msgs += _tool_turns(env, calls, mode)
    final = f"Done. The answer is {s['answer']}." if s["answer"] else "Done."
    why = {"non_think": None, "think_high": "I have what I need.",
           "think_max": "All calls succeeded and I have the result. I report it."}[mode]
    msgs.append({"role": "assistant", "content": _turn(why, final)})
    return msgs


# ------------------------------------------------------------------------------------------------ other environments
def python_row(code_task: dict, max_turns: int = 3) -> dict:
    """A code task (HumanEval's fields, ``rewards.tasks.code``) as a task for a code agent with ``run_python``."""
    return {**code_task, "domain": "agent", "env": "python", "max_turns": max_turns}


def _python_demonstration(s: dict, mode: str) -> list[dict]:
    """Run the reference solution against the tests with ``run_python``, then answer with the code."""
    env = make_env(s)
    head = s["prompt"].split("\n", 1)[0]
    code = f"{head}\n{s['canonical_solution']}"
    check = f"{code}\n{s['test']}\ncheck({s['entry_point']})\nprint('tests pass')\n"
    why = {"non_think": None, "think_high": "I test my solution.",
           "think_max": "I write the function and run the tests on it before answering."}[mode]
    msgs = [{"role": "user", "content": s["prompt"]}]
    msgs += _tool_turns(env, [{"name": "run_python", "arguments": {"code": check}}], mode, why)
    done = {"non_think": None, "think_high": "The tests pass.",
            "think_max": "The tests pass, so I give the code."}[mode]
    msgs.append({"role": "assistant", "content": _turn(done, f"```python\n{code}```")})
    return msgs


def bfcl_row(question: str, functions: list[dict], ground_truth: list[dict], **extra) -> dict:
    """A BFCL question: ``functions`` (BFCL's function docs), ``ground_truth`` (expected calls ``{name, arguments}``
    or BFCL's possible answers ``{func: {param: [allowed]}}``; empty: no call is right)."""
    return {"prompt": question, "domain": "agent", "env": "bfcl", "functions": json.dumps(functions),
            "ground_truth": json.dumps(ground_truth), "max_turns": 1, **extra}


def _bfcl_demonstration(s: dict, mode: str) -> list[dict]:
    """One turn making the ground-truth calls (``bfcl._demo_calls``: each parameter's first allowed value), or an
    answer without calls."""
    calls = _demo_calls(json.loads(s["ground_truth"]), json.loads(s["functions"]))
    msgs = [{"role": "user", "content": s["prompt"]}]
    why = {"non_think": None, "think_high": "I call the matching function." if calls else "No function fits.",
           "think_max": ("The question maps onto the given functions; I call them." if calls
                         else "None of the given functions answers this; I say so.")}[mode]
    text = "\n\n" + format_tool_calls(calls) if calls else NO_CALL_ANSWER
    return msgs + [{"role": "assistant", "content": _turn(why, text)}]
