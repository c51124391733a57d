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


# level 2 adds these: two constants to copy and two operations to compose (fn of (arg, k, m))
COMPOSED = [
    ("Return x times {k} plus {m}.", "x", "return x * {k} + {m}", lambda x, k, m: x * k + m, [0, 2, -3, 5]),
    ("Return x minus {k}, times {m}.", "x", "return (x - {k}) * {m}", lambda x, k, m: (x - k) * m, [0, 4, -1, 11]),
    ("Return the sum of xs times {k} plus {m}.", "xs", "return sum(xs) * {k} + {m}",
     lambda xs, k, m: sum(xs) * k + m, [[], [1, 2], [3, -1, 4]]),
    ("Return the number of elements of xs greater than {k}, plus {m}.", "xs",
     "return len([v for v in xs if v > {k}]) + {m}", lambda xs, k, m: len([v for v in xs if v > k]) + m,
     [[], [1, 9, 5], [10, 2, 7, 8, 3]]),
    ("Return the list xs without the elements equal to {k}, each plus {m}.", "xs",
     "return [v + {m} for v in xs if v != {k}]", lambda xs, k, m: [v + m for v in xs if v != k],
     [[], [2, 2, 5], [1, 3, 4, 6, 7, 8, 9]]),
    ("Return the smallest element of xs times {k} minus {m}.", "xs", "return min(xs) * {k} - {m}",
     lambda xs, k, m: min(xs) * k - m, [[1], [3, 9, 2], [-5, -2]]),
]


def sample(rng: random.Random, level: int = 1) -> dict:
    """One function to write. ``level`` 1: one operation with one constant (8 families); 2: those and 6 families
    that compose two operations with two constants (half the draws)."""
    if level not in (1, 2):
        raise ValueError(f"level must be 1 or 2, got {level}")
    if level == 2 and rng.random() < 0.5:
        doc, arg, body, fn, inputs = rng.choice(COMPOSED)
        k, m = rng.randint(2, 9), rng.randint(2, 9)
        consts, f = {"k": k, "m": m}, (lambda x: fn(x, k, m))
        tag = f"{k}/{m}"
    else:
        doc, arg, body, fn, inputs = rng.choice(FAMILIES)
        k = rng.randint(2, 9)
        consts, f, tag = {"k": k}, (lambda x: fn(x, k)), f"{k}"
    name = f"{rng.choice(NAMES)}_{rng.randint(0, 99)}"
    prompt = f'def {name}({arg}):\n    """{doc.format(**consts)}"""\n'
    asserts = "".join(f"    assert candidate({x!r}) == {f(x)!r}\n" for x in inputs)
    return {
        "task_id": f"gen/{name}/{tag}",
        "prompt": prompt,
        "canonical_solution": f"    {body.format(**consts)}\n",
        "test": f"def check(candidate):\n{asserts}",
        "entry_point": name,
        "doc": doc.format(**consts),
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
