"""Math: multi-step arithmetic and algebra word problems with exact answers (integers and fractions).

Fields: ``question``, ``answer`` (exact, e.g. ``7`` or ``5/6``), ``steps`` (the worked solution, one line each).
"""
from __future__ import annotations

import random
from fractions import Fraction

NAMES = ["Tom", "Ana", "Li", "Sam", "Mia", "Omar", "Eva", "Raj"]
ITEMS = ["apples", "books", "coins", "pens", "cards", "eggs"]


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def sample(rng: random.Random, max_n: int = 9) -> dict:
    """One problem with operands up to ``max_n`` (2..9; story problems give away at most what was held): the size
    of the arithmetic a model must know."""
    if not 2 <= max_n <= 9:
        raise ValueError(f"max_n must be in 2..9, got {max_n}")
    N = max_n
    kind = rng.choice(["story", "mixed", "fraction", "linear", "scale"])
    if kind == "story":
        a, b = rng.randint(2, N), rng.randint(1, N)
        c = rng.randint(1, a + b - 1)
        n, it = rng.choice(NAMES), rng.choice(ITEMS)
        q = f"{n} has {a} {it}, gets {b} more and gives away {c}. How many {it} does {n} have now?"
        s1, ans = a + b, a + b - c
        steps = [f"{a}+{b}={s1}", f"{s1}-{c}={ans}"]
        check = f"{ans}+{c}={s1}"
        ans = Fraction(ans)
    elif kind == "mixed":
        a, b, c = rng.randint(1, N), rng.randint(1, N), rng.randint(1, N)
        q = f"What is {a} + {b} * {c}?"
        p = b * c
        ans = Fraction(a + p)
        steps = [f"{b}*{c}={p}", f"{a}+{p}={a + p}"]
        check = f"{a + p}-{a}={p}"
    elif kind == "fraction":
        d = rng.randint(2, N)
        a, b = rng.randint(1, d), rng.randint(1, d)
        q = f"What is {a}/{d} + {b}/{d}? Give the answer as a reduced fraction."
        ans = Fraction(a + b, d)
        steps = [f"{a}+{b}={a + b}", f"{a + b}/{d}={_fmt(ans)}"]
        check = f"{_fmt(ans)}-{b}/{d}={_fmt(ans - Fraction(b, d))}"
    elif kind == "linear":
        a, x = rng.randint(1, N), rng.randint(1, N)
        q = f"Solve for x: x + {a} = {a + x}."
        ans = Fraction(x)
        steps = [f"x={a + x}-{a}", f"x={x}"]
        check = f"{x}+{a}={a + x}"
    else:
        k, x = rng.randint(2, N), rng.randint(1, N)
        q = f"Solve for x: {k}x = {k * x}."
        ans = Fraction(x)
        steps = [f"x={k * x}/{k}", f"x={x}"]
        check = f"{k}*{x}={k * x}"
    return {"prompt": q, "question": q, "answer": _fmt(ans), "steps": steps, "check": check}


def demonstration(s: dict, mode: str) -> list[dict]:
    final = f"The answer is \\boxed{{{s['answer']}}}."
    if mode == "non_think":
        content = final
    elif mode == "think_high":
        content = " ".join(s["steps"]) + "</think>" + final
    else:
        content = ("Let me work step by step. " + ". ".join(s["steps"]) + f". Check: {s['check']}. "
                   "The check holds.</think>" + final)
    return [{"role": "user", "content": s["prompt"]}, {"role": "assistant", "content": content}]
