"""Code: small Python functions with unit tests, in HumanEval's fields.

Fields: ``task_id``, ``prompt`` (signature + docstring), ``canonical_solution`` (the body), ``test`` (a ``check``
function of ``candidate``), ``entry_point``.
"""
from __future__ import annotations

import random

NAMES = ["solve", "compute", "transform", "apply", "calc", "process", "handle", "convert"]

# (docstring template, argument, body template, python function of (arg, k), test inputs)
FAMILIES = [
    ("Return x plus {k}.", "x", "return x + {k}", lambda x, k: x + k, [0, 3, -2, 10]),
    ("Return x times {k}.", "x", "return x * {k}", lambda x, k: x * k, [0, 2, -3, 7]),
    ("Return x minus {k}.", "x", "return x - {k}", lambda x, k: x - k, [0, 5, -1, 12]),
    ("Return True if x is divisible by {k}.", "x", "return x % {k} == 0", lambda x, k: x % k == 0, [0, 4, 6, 9, 12]),
    ("Return the list xs with every element multiplied by {k}.", "xs", "return [v * {k} for v in xs]",
     lambda xs, k: [v * k for v in xs], [[], [1, 2], [3, -1, 0]]),
    ("Return the list xs with {k} added to every element.", "xs", "return [v + {k} for v in xs]",
     lambda xs, k: [v + k for v in xs], [[], [1, 2], [5, -4]]),
    ("Return the string s repeated {k} times.", "s", "return s * {k}", lambda s, k: s * k, ["", "ab", "x"]),
    ("Return the largest element of xs plus {k}.", "xs", "return max(xs) + {k}", lambda xs, k: max(xs) + k,
     [[1], [3, 9, 2], [-5, -2]]),
]


def sample(rng: random.Random) -> dict:
    doc, arg, body, fn, inputs = rng.choice(FAMILIES)
    k = rng.randint(2, 9)
    name = f"{rng.choice(NAMES)}_{rng.randint(0, 99)}"
    prompt = f'def {name}({arg}):\n    """{doc.format(k=k)}"""\n'
    asserts = "".join(f"    assert candidate({x!r}) == {fn(x, k)!r}\n" for x in inputs)
    return {
        "task_id": f"gen/{name}/{k}",
        "prompt": prompt,
        "canonical_solution": f"    {body.format(k=k)}\n",
        "test": f"def check(candidate):\n{asserts}",
        "entry_point": name,
        "doc": doc.format(k=k),
    }


def demonstration(s: dict, mode: str) -> list[dict]:
    head = s["prompt"].split("\n", 1)[0]
    code = f"```python\n{head}\n{s['canonical_solution']}```"
    body = s["canonical_solution"].strip()
    if mode == "non_think":
        content = code
    elif mode == "think_high":
        content = f"{s['doc']} So: {body}.</think>{code}"
    else:
        content = (f"The docstring says: {s['doc']} The function takes {head[4:-1]}. "
                   f"So the body is {body}. Check the edge cases in the tests.</think>{code}")
    return [{"role": "user", "content": s["prompt"]}, {"role": "assistant", "content": content}]
