"""reasoning-gym as a math source: rows, split, demonstrations, and its own score_answer against our math verifier."""
import pytest

reasoning_gym = pytest.importorskip("reasoning_gym", reason="the reasoning-gym package (make setup installs it)")

from rewards.base import score_batch  # noqa: E402
from rewards.tasks import load_tasks  # noqa: E402
from rewards.tasks.reasoning_gym import check_datasets, load_reasoning_gym, split_of  # noqa: E402
from rewards.tasks.rows import RowError  # noqa: E402

ARITH = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}
SOURCE = {"source": "reasoning_gym", "reasoning_gym": {"datasets": {"gsm_symbolic": {}, "basic_arithmetic": ARITH}}}


def test_rows_interleave_generators_and_carry_the_verifier_spec():
    rows = load_tasks("math", "train", 6, 0, SOURCE)
    assert [r["rg_dataset"] for r in rows] == ["gsm_symbolic", "basic_arithmetic"] * 3
    for r in rows:
        assert r["domain"] == "math" and r["answer"] and r["prompt"]
        assert r["origin"]["source"] == f"reasoning_gym:{r['rg_dataset']}"
        assistant = r["example"]["messages"][-1]
        assert assistant["content"] == f"The answer is \\boxed{{{r['answer']}}}."
        # worked solutions are the reasoning (think modes); answer-only rows have none (non_think)
        has_cot = bool(assistant.get("reasoning_content"))
        assert has_cot == (r["rg_dataset"] == "gsm_symbolic")
        if has_cot:
            assert "####" not in assistant["reasoning_content"]


def test_split_is_disjoint_and_deterministic():
    train = load_reasoning_gym("math", "train", 40, SOURCE)
    test = load_reasoning_gym("math", "test", 10, SOURCE)
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in test})
    assert all(split_of(r["prompt"]) == "test" for r in test)
    assert [r["prompt"] for r in load_reasoning_gym("math", "test", 10, SOURCE)] == [r["prompt"] for r in test]


def test_bad_generator_or_config_is_one_line():
    with pytest.raises(ValueError, match="datasets.no_such_gen"):
        check_datasets({"no_such_gen": {}})
    with pytest.raises(ValueError, match="datasets.basic_arithmetic"):
        check_datasets({"basic_arithmetic": {"min_terms": 5, "max_terms": 2}})
    with pytest.raises(RowError, match="tasks.code: source: reasoning_gym gives math rows"):
        load_reasoning_gym("code", "train", 2, SOURCE)


def _candidates(gold: str) -> list[str]:
    n = int(gold)
    return [gold, str(n + 1), str(-n) if n else "1", f"{n}.0", f"{n:,}" if abs(n) >= 1000 else f"+{n}"]


@pytest.mark.parametrize("name,cfg", [("gsm_symbolic", {}), ("basic_arithmetic", ARITH), ("chain_sum", {})])
def test_score_answer_agrees_with_math_verify(name, cfg):
    """reasoning-gym's own checker and our math verifier (math-verify) on the same answers agree on every right and
    every wrong answer but two kinds, both measured here and in docs/data.md: gsm_symbolic's ``score_answer``
    accepts the negated answer (its regex ``\\b-?\\d+`` cannot match a leading minus after a word boundary, so
    ``-20`` reads as ``20``) where ours rejects it; and the same number written otherwise (``12.0``, ``+12``,
    ``1,234``), which math-verify accepts and reasoning-gym's exact-string (basic_arithmetic, chain_sum) or
    first-number (gsm_symbolic: ``1,234`` reads as ``1``) checks reject."""
    ds = reasoning_gym.create_dataset(name, size=12, seed=3, **cfg)
    texts, samples, theirs, cands = [], [], [], []
    for e in ds:
        for c in _candidates(str(e["answer"])):
            texts.append(f"Let me compute.</think>The answer is \\boxed{{{c}}}.")
            samples.append({"answer": str(e["answer"]), "domain": "math"})
            theirs.append(float(ds.score_answer(c, e)) >= 1.0)
            cands.append((str(e["answer"]), c))
    ours = [v.score >= 1.0 for v in score_batch("math", texts, samples, "think_high", workers=1)]
    disagree = [(g, c, t, o) for (g, c), t, o in zip(cands, theirs, ours) if t != o]

    def explained(g, c, t, o):
        negated = t and not o and name == "gsm_symbolic" and c == f"-{g}"
        same_number = o and not t and float(c.replace(",", "").replace("+", "")) == float(g)
        return negated or same_number

    unexplained = [d for d in disagree if not explained(*d)]
    assert not unexplained, unexplained
    assert sum(t and o for t, o in zip(theirs, ours)) >= len(ds)     # every gold answer accepted by both
    assert sum(ours) < len(ours) and sum(theirs) < len(theirs)       # and wrong ones rejected by both
