"""The instruction-following generator (rewards/tasks/instruct.py): all 25 IFEval types with IFEval's argument names,
no clashing pair, a reference response the strict verifier always accepts, targeted mutations it rejects, and
determinism for a seed."""
import collections
import itertools
import random
import re

import pytest

from rewards.ifeval import CHECKERS, evaluate
from rewards.langdetect import detect_language
from rewards.tasks import generate
from rewards.tasks import instruct as I

# IFEval's get_instruction_args_keys() per type
ARGS = {
    "keywords:existence": {"keywords"}, "keywords:frequency": {"keyword", "frequency", "relation"},
    "keywords:forbidden_words": {"forbidden_words"},
    "keywords:letter_frequency": {"letter", "let_frequency", "let_relation"},
    "language:response_language": {"language"},
    "length_constraints:number_sentences": {"num_sentences", "relation"},
    "length_constraints:number_paragraphs": {"num_paragraphs"},
    "length_constraints:number_words": {"num_words", "relation"},
    "length_constraints:nth_paragraph_first_word": {"num_paragraphs", "nth_paragraph", "first_word"},
    "detectable_content:number_placeholders": {"num_placeholders"},
    "detectable_content:postscript": {"postscript_marker"},
    "detectable_format:number_bullet_lists": {"num_bullets"}, "detectable_format:constrained_response": set(),
    "detectable_format:number_highlighted_sections": {"num_highlights"},
    "detectable_format:multiple_sections": {"section_spliter", "num_sections"}, "detectable_format:json_format": set(),
    "detectable_format:title": set(), "combination:two_responses": set(),
    "combination:repeat_prompt": {"prompt_to_repeat"},
    "startend:end_checker": {"end_phrase"}, "startend:quotation": set(),
    "change_case:capital_word_frequency": {"capital_frequency", "capital_relation"},
    "change_case:english_capital": set(), "change_case:english_lowercase": set(), "punctuation:no_comma": set(),
}


@pytest.fixture(scope="module")
def drawn():
    return generate("instruct", "train", 2000, 0) + generate("instruct", "test", 300, 0)


def _strict(s, response=None):
    return evaluate(s["reference_response"] if response is None else response, s["instruction_id_list"], s["kwargs"], s)


def test_all_25_types_drawn_with_ifeval_argument_names_and_phrasing(drawn):
    counts = collections.Counter(i for s in drawn[:2000] for i in s["instruction_id_list"])
    assert set(counts) == set(CHECKERS) == set(I.TYPES) == set(ARGS) and len(counts) == 25
    assert max(counts.values()) < 0.12 * 2000, counts.most_common(3)     # no type dominates
    for s in drawn:
        ids = s["instruction_id_list"]
        assert 1 <= len(ids) <= 2 and len(set(ids)) == len(ids) and len(s["kwargs"]) == len(ids)
        assert set(s) >= {"prompt", "instruction_id_list", "kwargs", "reference_response", "id", "domain"}
        for iid, kw in zip(ids, s["kwargs"]):
            assert set(kw) == ARGS[iid], (iid, kw)
            assert all(v is not None for v in kw.values())
    one = next(s for s in drawn if s["instruction_id_list"] == ["length_constraints:number_sentences"])
    n, rel = one["kwargs"][0]["num_sentences"], one["kwargs"][0]["relation"]
    assert one["prompt"].endswith(f". Your response should contain {rel} {n} sentences.")


def test_reference_response_always_passes_the_strict_verifier(drawn):
    extra = [I.sample(random.Random(f"extra{i}")) for i in range(2000)]
    bad = [s for s in drawn + extra if _strict(s)["strict_all"] != 1.0]
    assert not bad, [(s["instruction_id_list"], s["kwargs"], s["reference_response"]) for s in bad[:3]]


def test_every_single_type_and_allowed_pair_composes_on_every_topic():
    allowed = [(a,) for a in I.TYPES] + [p for p in itertools.combinations(I.TYPES, 2) if not I.clash(*p)]
    assert len(allowed) > 200
    for ids in allowed:
        for topic in I.TOPICS:
            for seed in range(3):
                s = I.make(random.Random(f"{ids}/{topic}/{seed}"), list(ids), topic)
                assert sorted(s["instruction_id_list"]) == sorted(ids)
                r = _strict(s)
                assert r["strict_all"] == 1.0, (ids, topic, s["kwargs"], s["reference_response"], r["strict"])


def test_clash_table_holds_ifeval_conflicts_and_no_sample_draws_a_clash(drawn):
    c = I.clash
    for a, b in [("language:response_language", "keywords:existence"), ("detectable_format:json_format",
                 "detectable_format:title"), ("combination:two_responses", "detectable_content:postscript"),
                 ("combination:repeat_prompt", "startend:quotation"), ("length_constraints:number_paragraphs",
                 "length_constraints:number_sentences"), ("change_case:capital_word_frequency",
                 "change_case:english_lowercase"), ("startend:quotation", "detectable_format:title"),
                 ("detectable_format:multiple_sections", "detectable_format:number_highlighted_sections"),
                 ("change_case:english_lowercase", "change_case:english_capital")]:
        assert c(a, b) and c(b, a)
    assert all(c("detectable_format:constrained_response", t) for t in I.TYPES)
    for a, b in [("keywords:existence", "detectable_format:json_format"), ("combination:repeat_prompt",
                 "detectable_format:title"), ("combination:two_responses", "language:response_language"),
                 ("startend:end_checker", "detectable_content:postscript"), ("startend:quotation",
                 "startend:end_checker")]:
        assert not c(a, b)                      # they compose: never excluded without a reason
    assert all(reason for reason in I.EXTRA_CLASHES.values())
    assert all(len(p) == 2 for p in I.CLASHES)
    for s in drawn:
        ids = s["instruction_id_list"]
        assert not any(c(a, b) for a, b in itertools.combinations(ids, 2)), ids
    pairs = {frozenset(I.draw_ids(random.Random(i))) for i in range(3000)}
    assert not any(len(p) == 2 and p in I.CLASHES for p in pairs)
    with pytest.raises(ValueError, match="clash"):
        I.make(random.Random(0), ["startend:quotation", "detectable_format:title"])


def test_our_extra_clashes_are_real():
    """Each pair the generator adds to IFEval's table fails when composed anyway."""
    def forced(ids, kw, lang="en", k=2):
        return I.respond("cats", lang, k, ids, kw)

    ids = ["detectable_format:multiple_sections", "change_case:english_lowercase"]
    kw = {ids[0]: {"section_spliter": "SECTION", "num_sections": 2}, ids[1]: {}}
    assert evaluate(forced(ids, kw), ids, [kw[i] for i in ids])["strict"] == [False, True]
    ids = ["detectable_format:number_bullet_lists", "startend:quotation"]
    kw = {ids[0]: {"num_bullets": 2}, ids[1]: {}}
    assert evaluate(forced(ids, kw), ids, [kw[i] for i in ids])["strict"] == [False, True]
    assert "," in I._phrase("punctuation:no_comma", {})   # what repeat_prompt would have to repeat


def _mutations(iid, kw, r):
    """Responses that break instruction ``iid`` (and may break others)."""
    if iid == "keywords:existence":
        return [re.sub(kw["keywords"][0], "", r, flags=re.I)]
    if iid == "keywords:frequency":
        return ([re.sub(kw["keyword"], "", r, flags=re.I)] if kw["relation"] == "at least"
                else [r + f" {kw['keyword']}" * kw["frequency"]])
    if iid == "keywords:forbidden_words":
        return [r + f" {w}." for w in kw["forbidden_words"]]
    if iid == "keywords:letter_frequency":
        return ([re.sub(kw["letter"], "", r, flags=re.I)] if kw["let_relation"] == "at least"
                else [r + " " + kw["letter"] * kw["let_frequency"]])
    if iid == "language:response_language":
        return ["The weather is nice today and we are going to the park with the dog."]
    if iid in ("length_constraints:number_sentences", "length_constraints:number_words"):
        return ["..."] if kw["relation"] == "at least" else [r + " Yes." * kw.get("num_sentences", 0)
                                                             + " word" * kw.get("num_words", 0)]
    if iid == "length_constraints:number_paragraphs":
        return [r + "\n***\nOne more paragraph.", r.replace("\n***\n", "\n", 1)]
    if iid == "length_constraints:nth_paragraph_first_word":
        paras = r.split("\n\n")
        i = kw["nth_paragraph"] - 1
        paras[i] = "zebra " + paras[i].split(" ", 1)[1]
        return ["\n\n".join(paras), r.replace("\n\n", "\n", 1)]
    if iid == "detectable_content:number_placeholders":
        return [r.replace("[", "(").replace("]", ")")]
    if iid == "detectable_content:postscript":
        return [re.sub(r"p\.\s?p\.\s?s|p\.\s?s\.", "PS", r, flags=re.I)]
    if iid == "detectable_format:number_bullet_lists":
        return [r + "\n* One more point.", r.replace("* ", "", 1)]
    if iid == "detectable_format:constrained_response":
        return [r.replace("My answer is", "I think it is")]
    if iid == "detectable_format:number_highlighted_sections":
        return [r.replace("*", "")]
    if iid == "detectable_format:multiple_sections":
        return [r.replace(kw["section_spliter"], "Part")]
    if iid == "detectable_format:json_format":
        return [r + " and more", r.replace("}", "")]
    if iid == "detectable_format:title":
        return [r.replace("<<", "").replace(">>", "")]
    if iid == "combination:two_responses":
        a = r.split("******")
        return [r.replace("******", ""), "******".join([a[0], a[0]])]
    if iid == "combination:repeat_prompt":
        return [r.split(" ", 1)[1]]
    if iid == "startend:end_checker":
        return [r + " Bye."]
    if iid == "startend:quotation":
        return [r.strip('"')]
    if iid == "change_case:capital_word_frequency":
        return [r.lower()] if kw["capital_relation"] == "at least" else [r + " LOUD" * kw["capital_frequency"]]
    if iid == "change_case:english_capital":
        return [r.lower(), re.sub(r"([A-Z])([^A-Z]*)$", lambda m: m[1].lower() + m[2], r)]   # one letter
    if iid == "change_case:english_lowercase":
        return [r.upper(), re.sub(r"[a-z]", lambda m: m[0].upper(), r, count=1)]
    if iid == "punctuation:no_comma":
        return [r.replace(" ", ", ", 1)]
    raise AssertionError(iid)


def test_targeted_mutations_are_rejected(drawn):
    by_type = collections.defaultdict(list)
    for s in drawn:
        for pos, iid in enumerate(s["instruction_id_list"]):
            if len(by_type[iid]) < 25:
                by_type[iid].append((s, pos))
    assert len(by_type) == 25
    for iid, items in by_type.items():
        for s, pos in items:
            for bad in _mutations(iid, s["kwargs"][pos], s["reference_response"]):
                assert bad != s["reference_response"], (iid, bad)
                assert _strict(s, bad)["strict"][pos] is False, (iid, s["kwargs"][pos], bad)


def test_deterministic_for_a_seed():
    assert generate("instruct", "train", 200, 7) == generate("instruct", "train", 200, 7)
    assert generate("instruct", "train", 50, 7) != generate("instruct", "train", 50, 8)
    ids = ["detectable_format:number_bullet_lists", "keywords:forbidden_words"]
    assert I.make(random.Random(3), ids) == I.make(random.Random(3), ids)


def test_responses_stay_short(drawn):
    lens = sorted(len(s["reference_response"]) for s in drawn)
    assert sum(lens) / len(lens) < 110 and lens[int(0.99 * len(lens))] < 200 and lens[-1] < 260, lens[-5:]


def test_fixed_vocabulary_is_safe():
    """Keywords never occur in other text (frequency counts substrings); the extra forbidden words never occur;
    every sentence alone is recognised as its language, in any case."""
    texts = [s for d in I.SENTENCES.values() for ss in d.values() for s in ss] + I.END_PHRASES + \
        [I.EXISTENCE_SENTENCE, *I.FIRST_WORDS["en"], "".join(I.PLACEHOLDERS["en"]), I.POSTSCRIPTS["en"],
         '{"topic": "the sea", "text": ""} SECTION Section P.S. P.P.S', *(t["en"] for t in I.TITLES.values())]
    for w in I.KEYWORDS:
        assert not any(w in t.lower() for t in texts), w
    for w in I.FORBIDDEN_EXTRA:
        assert not any(re.search(rf"\b{w}\b", t, re.I) for t in texts), w
    for topic in I.TOPICS:
        assert len(I.forbidden_candidates(topic)) >= 5
        for lang, sents in I.SENTENCES[topic].items():
            assert len(sents) == 4 and not any("," in s for s in sents)
            for s in sents:
                assert all(detect_language(v) == lang for v in (s, s.upper(), s.lower())), (lang, s)
