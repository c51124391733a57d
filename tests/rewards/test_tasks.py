"""Task generator parameters: math's ``max_n`` bounds the operands; unknown or bad parameters are one-line errors."""
import re

import pytest

from rewards.tasks import generate, generator_params, load_tasks


def _operands(q: str) -> list[int]:
    nums = [int(x) for x in re.findall(r"\d+", q)]
    if q.startswith("Solve for x: x +"):      # x + a = a+x: a is the operand, the right side their sum
        return nums[:1]
    if q.startswith("Solve for x:"):          # kx = k*x
        return nums[:1]
    if " has " in q:                          # a, gets b more, gives away c <= a + b - 1
        return nums[:2]
    if "/" in q:                              # a/d + b/d: a, b <= d
        return [nums[1]]
    return nums                               # a + b * c


def test_math_max_n_bounds_the_operands_and_the_default_is_unchanged():
    assert generator_params("math") == {"max_n"} and generator_params("code") == {"level"}
    assert generate("math", "train", 40, 3) == generate("math", "train", 40, 3, {"max_n": 9})
    small = generate("math", "train", 80, 3, {"max_n": 4})
    assert all(max(_operands(s["question"])) <= 4 for s in small)
    assert max(max(_operands(s["question"])) for s in generate("math", "train", 80, 3)) > 4
    # the recipe's source dict carries the parameters
    assert load_tasks("math", "test", 5, 1, {"source": "generated", "params": {"max_n": 4}}) == \
        generate("math", "test", 5, 1, {"max_n": 4})


def test_bad_generator_parameters_name_the_field():
    with pytest.raises(ValueError, match=r"tasks.math.params: unknown \['digits'\]"):
        generate("math", "train", 1, 0, {"digits": 3})
    with pytest.raises(ValueError, match=r"tasks.math.params: max_n must be in 2..9"):
        generate("math", "train", 1, 0, {"max_n": 12})
    with pytest.raises(ValueError, match=r"tasks.code.params: unknown"):
        generate("code", "train", 1, 0, {"max_n": 4})


def test_instruct_generator_has_no_parameters_and_splits_by_prompt():
    from rewards.tasks import _split_of

    assert generator_params("instruct") == set()
    train, test = generate("instruct", "train", 300, 2), generate("instruct", "test", 60, 2)
    assert {s["prompt"] for s in train}.isdisjoint(s["prompt"] for s in test)
    assert all(_split_of(s["prompt"]) == "train" for s in train) and all(_split_of(s["prompt"]) == "test" for s in test)
    assert load_tasks("instruct", "test", 5, 2) == test[:5]


def test_code_level_2_composes_two_operations_and_its_solutions_pass():
    one, two = generate("code", "train", 200, 4), generate("code", "train", 200, 4, {"level": 2})
    assert one == generate("code", "train", 200, 4, {"level": 1})        # level 1 is the default, unchanged
    composed = [s for s in two if re.fullmatch(r"gen/\w+/\d/\d", s["task_id"])]
    assert 60 < len(composed) < 140 and not any(re.fullmatch(r"gen/\w+/\d/\d", s["task_id"]) for s in one)
    for s in composed + one[:20]:            # every canonical solution passes its own tests; a wrong one fails
        ns = {}
        exec(s["prompt"] + s["canonical_solution"], ns)
        exec(s["test"], ns)
        ns["check"](ns[s["entry_point"]])
    s = composed[0]
    ns = {}
    exec(s["prompt"] + "    return None\n", ns)
    exec(s["test"], ns)
    with pytest.raises(AssertionError):
        ns["check"](ns[s["entry_point"]])
    with pytest.raises(ValueError, match="tasks.code.params: level must be 1 or 2"):
        generate("code", "train", 1, 0, {"level": 0})
