"""IFEval verifier: a passing and a failing response for each of the 25 instruction types, scoring modes,
fail-closed behaviour (missing arguments, undetectable language), and the reasoning strip."""
import pytest

from rewards.base import score_local
from rewards.ifeval import CHECKERS, detect_language, evaluate, split_sentences

EN = "The weather is nice today and we are going to the park with the dog."
CASES = {
    # id: (kwargs, passing response, failing response)
    "keywords:existence": ({"keywords": ["blue", "quiet"]}, "A quiet blue morning.", "A loud red morning."),
    "keywords:frequency": ({"keyword": "cat", "frequency": 3, "relation": "at least"},
                           "cat cat and another cat", "one cat only"),
    "keywords:forbidden_words": ({"forbidden_words": ["bad", "evil"]}, "A good day.", "A bad day."),
    "keywords:letter_frequency": ({"letter": "z", "let_frequency": 2, "let_relation": "less than"},
                                  "zebra", "zig zag zoo"),
    "language:response_language": ({"language": "es"}, "El gato está en la casa y es muy feliz con su familia.",
                                   EN),
    "length_constraints:number_sentences": ({"num_sentences": 3, "relation": "less than"},
                                            "One. Two.", "One. Two. Three. Four."),
    "length_constraints:number_paragraphs": ({"num_paragraphs": 2}, "First part.\n***\nSecond part.",
                                             "Only one part."),
    "length_constraints:number_words": ({"num_words": 5, "relation": "at least"},
                                        "one two three four five six", "one two"),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "second"},
        "First paragraph here.\n\nSecond paragraph here.", "First paragraph here.\n\nThird paragraph here."),
    "detectable_content:number_placeholders": ({"num_placeholders": 2}, "Dear [name], at [address].",
                                               "Dear [name]."),
    "detectable_content:postscript": ({"postscript_marker": "P.S."}, "Hello.\n\nP.S. See you.", "Hello."),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, "* one\n* two", "* one\n* two\n* three"),
    "detectable_format:constrained_response": ({}, "My answer is yes.", "Yes, I think so."),
    "detectable_format:number_highlighted_sections": ({"num_highlights": 2}, "*one* and *two*", "*one* only"),
    "detectable_format:multiple_sections": ({"section_spliter": "Section", "num_sections": 2},
                                            "Section 1\nintro\nSection 2\nbody", "Section 1\nintro only"),
    "detectable_format:json_format": ({}, '```json\n{"a": 1}\n```', "{a: 1"),
    "detectable_format:title": ({}, "<<My Title>>\nText.", "My Title\nText."),
    "combination:two_responses": ({}, "First answer.\n******\nSecond answer.", "First answer.\n******\nFirst answer."),
    "combination:repeat_prompt": ({"prompt_to_repeat": "Write a poem."}, "Write a poem. Roses are red.",
                                  "Roses are red."),
    "startend:end_checker": ({"end_phrase": "That is all."}, "Some text. That is all.", "That is all. Some text."),
    "startend:quotation": ({}, '"Wrapped in quotes."', "Not wrapped."),
    "change_case:capital_word_frequency": ({"capital_frequency": 2, "capital_relation": "at least"},
                                           "THIS is VERY important", "this is Very important"),
    "change_case:english_capital": ({}, EN.upper(), EN),
    "change_case:english_lowercase": ({}, EN.lower(), EN),
    "punctuation:no_comma": ({}, "No commas here.", "Commas, here."),
}


def test_all_25_types_covered():
    assert set(CASES) == set(CHECKERS) and len(CHECKERS) == 25


@pytest.mark.parametrize("iid", sorted(CASES))
def test_pass_and_fail(iid):
    kw, good, bad = CASES[iid]
    sample = {"instruction_id_list": [iid], "kwargs": [kw], "prompt": "p"}
    g = score_local("instruct", good, sample, "non_think")
    b = score_local("instruct", bad, sample, "non_think")
    assert g.score == 1.0, (iid, g.details)
    assert b.score == 0.0, (iid, b.details)
    assert b.details["failed_checks"] == [iid]


def test_strict_loose_all_fraction():
    ids = ["punctuation:no_comma", "startend:end_checker"]
    kw = [{}, {"end_phrase": "Bye."}]
    # fails strictly (markdown asterisks around the end phrase) but passes loosely
    r = evaluate("Hello there **Bye.**", ids, kw)
    assert r["strict"] == [True, False] and r["loose"] == [True, True]
    assert (r["strict_all"], r["strict_fraction"], r["loose_all"], r["loose_fraction"]) == (0.0, 0.5, 1.0, 1.0)
    for scoring, want in [("strict_all", 0.0), ("strict_fraction", 0.5), ("loose_all", 1.0), ("loose_fraction", 1.0)]:
        s = {"instruction_id_list": ids, "kwargs": kw, "ifeval_scoring": scoring}
        assert score_local("instruct", "Hello there **Bye.**", s, "non_think").score == want


@pytest.mark.parametrize("iid,kw", [
    ("keywords:frequency", {"keyword": "cat", "frequency": None, "relation": "at least"}),
    ("length_constraints:number_words", {"num_words": 3}),
    ("length_constraints:number_sentences", {"num_sentences": None, "relation": None}),
    ("detectable_content:number_placeholders", {}),
    ("keywords:letter_frequency", {"letter": None, "let_frequency": 1, "let_relation": "at least"}),
])
def test_missing_arguments_fail_closed_no_random_threshold(iid, kw):
    s = {"instruction_id_list": [iid], "kwargs": [kw]}
    for _ in range(5):  # deterministic: the reference draws a random threshold here
        v = score_local("instruct", "cat cat cat [a] [b] [c] words words words. More. More.", s, "non_think")
        assert v.score == 0.0 and "missing argument" in v.details["error"]


def test_language_detection_fails_closed():
    assert detect_language("asdf qwer zxcv uiop hjkl") is None
    assert detect_language("ok") is None
    assert detect_language(EN) == "en"
    assert detect_language("Кошка сидит на ковре и очень довольна.") == "ru"
    assert detect_language("猫はマットの上にいます。") == "ja"
    s = {"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "en"}]}
    assert score_local("instruct", "12345 !!! ???", s, "non_think").score == 0.0
    s = {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}
    assert score_local("instruct", "asdf qwer zxcv uiop hjkl", s, "non_think").score == 0.0


def test_sentence_splitter_offline():
    assert len(split_sentences("Dr. Smith went home. He ate 3.5 apples! Then? Yes.")) == 4
    assert len(split_sentences("e.g. this one is a single sentence.")) == 1
    assert len(split_sentences("Title\n\nBody sentence one. Body two.")) == 3


def test_reasoning_stripped_and_format_failure():
    s = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    assert score_local("instruct", "a, b, c</think>No commas.", s, "think_high").score == 1.0
    v = score_local("instruct", "No commas.", s, "think_high")  # no </think>
    assert v.score == 0.0 and v.details["format_ok"] is False


def test_empty_response_fails_everything():
    s = {"instruction_id_list": ["punctuation:no_comma", "keywords:forbidden_words"], "kwargs": [{}, {"forbidden_words": ["x"]}]}
    assert score_local("instruct", "   ", s, "non_think").score == 0.0


def test_generated_tasks_reference_responses_mostly_pass():
    from rewards.tasks import generate
    samples = generate("instruct", "train", 100)
    ok = [evaluate(s["reference_response"], s["instruction_id_list"], s["kwargs"], s)["loose_all"] for s in samples]
    assert sum(ok) == len(ok)
