"""Math verifier: equivalent forms accepted, wrong answers rejected, adversarial inputs bounded, pool keeps serving."""
import time

import pytest

from rewards.base import score, score_batch
from rewards.math_verifier import extract_answer

LIMIT = 3.0


@pytest.mark.parametrize("gold,completion,mode,want", [
    ("5/6", "I add.</think>The answer is \\boxed{\\frac{5}{6}}.<|end|>", "think_high", 1.0),
    ("5/6", "</think>x".replace("</think>", "") + "\\boxed{10/12}", "non_think", 1.0),
    ("5/6", "</think>\\boxed{0.8333333333}", "think_max", 1.0),
    ("5/6", "So.</think>Final answer: $\\dfrac{5}{6}$", "think_high", 1.0),
    ("7", "</think>\\boxed{7.0}", "think_high", 1.0),
    ("7", "</think>The answer is 7.", "think_high", 1.0),
    ("7", "</think>\\boxed{x = 7}", "think_high", 1.0),
    ("\\{1, 2\\}", "</think>\\boxed{\\{2, 1\\}}", "think_high", 1.0),
    ("x^2+2x+1", "</think>\\boxed{(x+1)^2}", "think_high", 1.0),
    ("5/6", "</think>\\boxed{6/5}", "think_high", 0.0),
    ("7", "</think>\\boxed{8}", "think_high", 0.0),
    ("7", "</think>I think it is 7", "think_high", 0.0),                    # no boxed / final-answer line
    ("7", "reasoning says \\boxed{7} but</think>\\boxed{8}", "think_high", 0.0),  # reasoning is not the answer
    ("7", "\\boxed{7}", "think_high", 0.0),                                # format failure: no </think>
    ("7", "<think>\\boxed{7}", "non_think", 0.0),                          # format failure: think tag in non-think
])
def test_equivalent_forms(gold, completion, mode, want):
    v = score("math", completion, {"answer": gold}, mode)
    assert v.score == want, v.details


def test_format_failure_reported():
    v = score("math", "\\boxed{7}", {"answer": "7"}, "think_high")
    assert v.details["format_ok"] is False and v.details["error"].startswith("format")


def test_extract_answer():
    assert extract_answer("a \\boxed{1} then \\boxed{\\frac{1}{2}}") == ("\\frac{1}{2}", "boxed")
    assert extract_answer("Final answer: 3.") == ("3", "final_line")
    assert extract_answer("\\boxed{\\frac{1}{2") == (None, "none")


ADVERSARIAL = [
    "</think>\\boxed{5^(5^(5^(5^5)))}",
    "</think>\\boxed{9^{9^{9^{9^{9}}}}}",
    "</think>\\boxed{(10^{10^{10}})!}",
    "</think>\\boxed{" + "9" * 1_000_000 + "}",
    "</think>The answer is " + "x+" * 500_000,
    "</think>" + "\\boxed{" * 100_000,
    "</think>\\boxed{\\frac{\\sqrt{}{}}{\\left(}\\right]}",
    "</think>\\boxed{\\begin{pmatrix}1&2\\\\3\\end{matrix}}",
    "</think>" + "a" * 2_000_000,
]


def test_adversarial_inputs_bounded_and_pool_keeps_serving():
    vs_t = []
    for c in ADVERSARIAL:
        t0 = time.monotonic()
        v = score_batch("math", [c], [{"answer": "3"}], "think_high", limit_s=LIMIT)[0]
        dt = time.monotonic() - t0
        vs_t.append((v, dt))
        assert v.score == 0.0
        assert dt < LIMIT + 2.0, (c[:60], dt, v.details)
    # afterwards the pool still answers correctly and fast
    vs = score_batch("math", ["</think>\\boxed{%d}" % i for i in range(40)], [{"answer": str(i)} for i in range(40)],
                     "think_high")
    assert all(v.score == 1.0 for v in vs)


def test_batch_mixed_with_bad_inputs_never_raises():
    comps = ["</think>\\boxed{1}", None, 123, "</think>\\boxed{2}"]
    samples = [{"answer": "1"}, {"answer": "1"}, {"answer": "1"}, {}]
    vs = score_batch("math", comps, samples, "think_high")
    assert [v.score for v in vs] == [1.0, 0.0, 0.0, 0.0]
    assert all(v.details["error"] for v in vs[1:])
