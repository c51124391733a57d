"""Instruction following: short writing prompts with IFEval-style constraints, all 25 of IFEval's instruction types.

Fields: ``instruction_id_list`` and ``kwargs`` (one dict per instruction, IFEval's argument names), and
``reference_response`` (a response that meets every constraint, used for SFT demonstrations).

A prompt is a task ("Write about cats.") followed by one or two instruction descriptions in the wording of
google-research's ``instruction_following_eval`` (``DESCRIPTIONS``). Two instructions are never drawn together when
they clash (``CLASHES``: IFEval's own conflict table, made symmetric, plus the pairs this generator does not compose,
each with its reason in ``EXTRA_CLASHES``). These tables and the content the responses are made of live in
``rewards.tasks.instruct_types`` and are re-exported here; this module draws, phrases and answers.

The reference response is built compositionally from short topic sentences, in a fixed order:
  body sentences (how many: from the layout or a length instruction; sentences holding a forbidden word skipped;
  word-level edits: the nth paragraph's first word, words in capitals, *highlighted* last words)
  + extra sentences (keywords, a repeated keyword, [placeholders])
  -> layout (plain, *** paragraphs, blank-line paragraphs, * bullets, SECTION X, two responses joined by ******, JSON)
  -> prefix lines (the repeated request, the <<title>>) and suffix lines (the postscript, then the end phrase)
  -> case (all lowercase / all capitals) -> "quotation marks".
The relation steers the text (three body sentences for "at least" sentences or words, one for "less than"; "at least
n" capital words: the first n words in capitals), while the counted thresholds (sentences, words, letters, capital
words for "less than") are taken from the finished response, counted as the verifier counts, so the response meets
them as written. Responses in another language use a small fixed
set of sentences (Spanish, French, German) -- there is no network.
"""
from __future__ import annotations

import functools
import json
import random
import re

from .instruct_types import (CLAIMS, CLASHES, CONSTRAINED_OPTIONS, DESCRIPTIONS, END_PHRASES, EXISTENCE_SENTENCE,
                             EXTRA_CLASHES, FIRST_WORDS, FORBIDDEN_EXTRA, IFEVAL_CONFLICTS, KEYWORDS, LANGUAGES,
                             LAYOUTS, LETTERS, P_SECOND, PLACEHOLDERS, POSTSCRIPTS, QUESTIONS, SENTENCES, TASKS,
                             TITLES, TOPICS, TYPES, WEIGHTS, clash)


# words a forbidden-word draw must avoid: they appear in text the response can hold besides the topic sentences
_TEMPLATE_TEXT = " ".join([EXISTENCE_SENTENCE, *KEYWORDS, *END_PHRASES, *PLACEHOLDERS["en"], *FIRST_WORDS["en"],
                           POSTSCRIPTS["en"], "topic text Section SECTION P.S. P.P.S", *TOPICS,
                           *(t["en"] for t in TITLES.values())])
_TEMPLATE_WORDS = {w.lower() for w in re.findall(r"[A-Za-z]+", _TEMPLATE_TEXT)}
_FUNCTION_WORDS = {"their", "they", "from", "very", "some", "many", "with", "well", "made", "make", "makes"}


def _has_word(text: str, word: str) -> bool:
    return re.search(r"\b" + re.escape(word) + r"\b", text, re.I) is not None


@functools.lru_cache(maxsize=None)
def forbidden_candidates(topic: str) -> tuple[str, ...]:
    """Content words of exactly one of ``topic``'s English sentences that nothing else in a response can contain
    (the response drops that sentence)."""
    sents = SENTENCES[topic]["en"]
    words = sorted({w.lower() for s in sents for w in re.findall(r"[A-Za-z]+", s)})
    return tuple(w for w in words if len(w) >= 4 and w not in _TEMPLATE_WORDS | _FUNCTION_WORDS
                 and sum(_has_word(s, w) for s in sents) == 1)


# ---------------------------------------------------------------- drawing
def _weighted(rng: random.Random, ids: list[str]) -> str:
    return rng.choices(ids, weights=[WEIGHTS[i] for i in ids])[0]


def draw_ids(rng: random.Random) -> list[str]:
    """One or two instruction ids that do not clash; ``combination:repeat_prompt`` always last."""
    ids = [_weighted(rng, list(TYPES))]
    if rng.random() < P_SECOND:
        pool = [t for t in TYPES if not clash(ids[0], t)]
        if pool:
            ids.append(_weighted(rng, pool))
    return _order(ids)


def _order(ids: list[str]) -> list[str]:
    """Descriptions with an example block (bullets, sections) after the others; the repeat instruction last."""
    return sorted(ids, key=lambda i: (i == "combination:repeat_prompt", "\n" in DESCRIPTIONS[i]))


def sample(rng: random.Random) -> dict:
    return make(rng, draw_ids(rng))


def make(rng: random.Random, ids: list[str], topic: str | None = None) -> dict:
    """A sample with instructions ``ids`` (which must not clash) about ``topic`` (drawn when None)."""
    for i, a in enumerate(ids):
        if a not in DESCRIPTIONS:
            raise ValueError(f"unknown instruction {a!r}")
        for b in ids[i + 1:]:
            if clash(a, b):
                raise ValueError(f"{a} and {b} clash")
    topic = topic or rng.choice(TOPICS)
    if "detectable_format:constrained_response" in ids:
        return _constrained(rng, topic)
    ids = _order(ids)
    has = set(ids)
    kw: dict[str, dict] = {i: {} for i in ids}
    lang = "en"
    if "language:response_language" in has:
        lang = rng.choice(sorted(LANGUAGES))
        kw["language:response_language"] = {"language": lang}

    # ---- how many body sentences, and the layout's unit count
    k = 2
    units = None
    if "length_constraints:number_paragraphs" in has:
        units = rng.randint(2, 3)
        kw["length_constraints:number_paragraphs"] = {"num_paragraphs": units}
    if "length_constraints:nth_paragraph_first_word" in has:
        units = rng.randint(2, 3)
        lo = 2 if "detectable_format:title" in has else 1   # the title line opens paragraph 1
        kw["length_constraints:nth_paragraph_first_word"] = {
            "num_paragraphs": units, "nth_paragraph": rng.randint(lo, units),
            "first_word": rng.choice(FIRST_WORDS[lang])}
    if "detectable_format:number_bullet_lists" in has:
        units = rng.randint(1, 3)
        kw["detectable_format:number_bullet_lists"] = {"num_bullets": units}
    if "detectable_format:multiple_sections" in has:
        units = rng.randint(2, 3)
        spliter = "SECTION" if "change_case:english_capital" in has else rng.choice(["Section", "SECTION"])
        kw["detectable_format:multiple_sections"] = {"section_spliter": spliter, "num_sections": units}
    if "combination:two_responses" in has:
        units = 2
    sent_rel = word_rel = None
    if "length_constraints:number_sentences" in has:
        sent_rel = rng.choice(["less than", "at least"])
    if "length_constraints:number_words" in has:
        word_rel = rng.choice(["less than", "at least"])
    if units is not None:
        k = units
    elif "at least" in (sent_rel, word_rel):
        k = 3
    elif "less than" in (sent_rel, word_rel):
        k = 1
    if "detectable_format:number_highlighted_sections" in has:
        n = rng.randint(1, min(3, units or 3))
        kw["detectable_format:number_highlighted_sections"] = {"num_highlights": n}
        k = max(k, n)

    # ---- content instructions
    forbidden: list[str] = []
    if "keywords:forbidden_words" in has:
        forbidden = [rng.choice(forbidden_candidates(topic))]
        if rng.random() < 0.5:
            forbidden.append(rng.choice(FORBIDDEN_EXTRA))
        kw["keywords:forbidden_words"] = {"forbidden_words": sorted(forbidden)}
    free = list(KEYWORDS)
    if "keywords:existence" in has:
        words = sorted(rng.sample(free, 2))
        free = [w for w in free if w not in words]
        kw["keywords:existence"] = {"keywords": words}
    if "keywords:frequency" in has:
        kw["keywords:frequency"] = {"keyword": rng.choice(free), "frequency": rng.randint(1, 3),
                                    "relation": rng.choice(["less than", "at least"])}
    if "detectable_content:number_placeholders" in has:
        kw["detectable_content:number_placeholders"] = {"num_placeholders": rng.randint(1, 3)}
    if "detectable_content:postscript" in has:
        kw["detectable_content:postscript"] = {"postscript_marker": rng.choice(["P.S.", "P.P.S"])}
    if "startend:end_checker" in has:
        kw["startend:end_checker"] = {"end_phrase": rng.choice(END_PHRASES)}
    if "change_case:capital_word_frequency" in has:   # "less than": the threshold is set below
        rel = rng.choice(["less than", "at least"])
        kw["change_case:capital_word_frequency"] = {"capital_frequency": rng.randint(1, 3) if rel == "at least"
                                                    else None, "capital_relation": rel}

    task = rng.choice(TASKS).format(topic=topic)
    if "combination:repeat_prompt" in has:
        # the request is the prompt without the repeat instruction (never a derived threshold: those clash)
        kw["combination:repeat_prompt"] = {"prompt_to_repeat": _prompt(task, ids[:-1], kw)}

    text = respond(topic, lang, k, ids, kw)

    # ---- thresholds taken from the finished response, counted as the verifier counts
    from rewards.ifeval import count_words, split_sentences

    if sent_rel is not None:
        n = len(split_sentences(text))
        num = min(rng.randint(2, 3), n) if sent_rel == "at least" else n + rng.randint(1, 2)
        kw["length_constraints:number_sentences"] = {"num_sentences": num, "relation": sent_rel}
    if word_rel is not None:
        n = count_words(text)
        num = (max(1, n // 5 * 5 - 5 * rng.randint(0, 1)) if word_rel == "at least"
               else (n // 5 + 1) * 5 + 5 * rng.randint(0, 1))
        kw["length_constraints:number_words"] = {"num_words": num, "relation": word_rel}
    if "keywords:letter_frequency" in has:
        letter = rng.choice(LETTERS)
        n = text.lower().count(letter)
        rel = rng.choice(["less than", "at least"]) if n else "less than"
        num = rng.randint(max(1, n // 2), n) if rel == "at least" else n + rng.randint(1, 3)
        kw["keywords:letter_frequency"] = {"letter": letter, "let_frequency": num, "let_relation": rel}
    cap = kw.get("change_case:capital_word_frequency")
    if cap is not None and cap["capital_relation"] == "less than":
        cap["capital_frequency"] = capital_words(text) + rng.randint(1, 2)

    return {"prompt": _prompt(task, ids, kw), "instruction_id_list": list(ids), "kwargs": [kw[i] for i in ids],
            "reference_response": text}


def _constrained(rng: random.Random, topic: str) -> dict:
    yes, no = CLAIMS[topic]
    answer = rng.choice(["yes", "no"])
    claim = rng.choice(yes if answer == "yes" else no)
    iid = "detectable_format:constrained_response"
    return {"prompt": rng.choice(QUESTIONS).format(claim=claim) + " " + _phrase(iid, {}), "instruction_id_list": [iid],
            "kwargs": [{}], "reference_response": f"My answer is {answer}."}


def capital_words(text: str) -> int:
    """Words in all capital letters, as the verifier counts them."""
    return sum(1 for w in re.findall(r"\b\w+\b", text) if w.isupper())


def _phrase(iid: str, kw: dict) -> str:
    t = DESCRIPTIONS[iid]
    if iid == "keywords:existence":
        return t.format(keywords=" and ".join(kw["keywords"]))
    if iid == "keywords:forbidden_words":
        return t.format(forbidden_words=" and ".join(kw["forbidden_words"]))
    if iid == "language:response_language":
        return t.format(language=LANGUAGES[kw["language"]])
    if iid == "detectable_content:postscript":
        return t.format(postscript_marker=kw["postscript_marker"])
    if iid == "detectable_format:constrained_response":
        return t.format(options=CONSTRAINED_OPTIONS)
    if iid == "startend:end_checker":
        p = kw["end_phrase"]
        return t.format(end_phrase=p, dot="" if p[-1] in ".?!" else ".")
    return t.format(**kw)


def _prompt(task: str, ids: list[str], kw: dict) -> str:
    return " ".join([task] + [_phrase(i, kw[i]) for i in ids])


# ---------------------------------------------------------------- the reference response
def _highlight_last_word(s: str) -> str:
    words = s[:-1].split(" ")
    words[-1] = f"*{words[-1]}*"
    return " ".join(words) + s[-1]


def respond(topic: str, lang: str, k: int, ids: list[str], kw: dict) -> str:
    """A response that satisfies every instruction in ``ids`` (what a perfect model would write)."""
    has = set(ids)
    forbidden = kw.get("keywords:forbidden_words", {}).get("forbidden_words", [])
    sents = [s for s in SENTENCES[topic][lang] if not any(_has_word(s, w) for w in forbidden)][:k]
    assert len(sents) == k, (topic, lang, k, forbidden)

    # word-level edits: the nth paragraph's first word, then words in capitals, then highlighted last words
    nth = kw.get("length_constraints:nth_paragraph_first_word")
    if nth:
        i, w = nth["nth_paragraph"] - 1, nth["first_word"]
        sents[i] = f"{w[0].upper()}{w[1:]} {sents[i][0].lower()}{sents[i][1:]}"
    cap = kw.get("change_case:capital_word_frequency")
    if cap and cap["capital_relation"] == "at least":
        words = sents[0].split(" ")
        n = cap["capital_frequency"]
        sents[0] = " ".join([w.upper() for w in words[:n]] + words[n:])
    for i in range(kw.get("detectable_format:number_highlighted_sections", {}).get("num_highlights", 0)):
        sents[i] = _highlight_last_word(sents[i])

    # extra sentences
    extras = []
    if "keywords:existence" in has:
        a, b = kw["keywords:existence"]["keywords"]
        extras.append(EXISTENCE_SENTENCE.format(a=a, b=b))
    if "keywords:frequency" in has:
        f = kw["keywords:frequency"]
        times = f["frequency"] if f["relation"] == "at least" else f["frequency"] - 1
        if times:
            words = " ".join([f["keyword"]] * times)
            extras.append(words[0].upper() + words[1:] + ".")
    if "detectable_content:number_placeholders" in has:
        extras.append("".join(PLACEHOLDERS[lang][:kw["detectable_content:number_placeholders"]["num_placeholders"]])
                      + ".")

    # layout
    if has & set(LAYOUTS) - {"detectable_format:json_format"}:
        units = sents[:-1] + [" ".join(sents[-1:] + extras)]
    if "length_constraints:number_paragraphs" in has:
        text = "\n***\n".join(units)
    elif "length_constraints:nth_paragraph_first_word" in has:
        text = "\n\n".join(units)
    elif "detectable_format:number_bullet_lists" in has:
        text = "\n".join("* " + u for u in units)
    elif "detectable_format:multiple_sections" in has:
        spliter = kw["detectable_format:multiple_sections"]["section_spliter"]
        text = "\n".join(f"{spliter} {i + 1}\n{u}" for i, u in enumerate(units))
    elif "combination:two_responses" in has:
        text = "\n******\n".join(units)
    elif "detectable_format:json_format" in has:
        text = json.dumps({"topic": topic, "text": " ".join(sents + extras)})
    else:
        text = " ".join(sents + extras)

    # prefix and suffix lines
    lines = []
    if "combination:repeat_prompt" in has:
        lines.append(kw["combination:repeat_prompt"]["prompt_to_repeat"])
    if "detectable_format:title" in has:
        lines.append(f"<<{TITLES[topic][lang]}>>")
    lines.append(text)
    if "detectable_content:postscript" in has:
        lines.append(kw["detectable_content:postscript"]["postscript_marker"] + " "
                     + POSTSCRIPTS[lang].format(topic=topic))
    if "startend:end_checker" in has:
        lines.append(kw["startend:end_checker"]["end_phrase"])
    text = "\n".join(lines)

    if "change_case:english_lowercase" in has:
        text = text.lower()
    if "change_case:english_capital" in has:
        text = text.upper()
    if "startend:quotation" in has:
        text = f'"{text}"'
    return text


def demonstration(s: dict, mode: str) -> list[dict]:
    ids = s["instruction_id_list"]
    names = ", ".join(i.split(":")[1].replace("_", " ") for i in ids)
    if mode == "non_think":
        content = s["reference_response"]
    elif mode == "think_high":
        content = f"Constraints: {names}.</think>{s['reference_response']}"
    else:
        content = (f"The request has {len(ids)} constraint(s): {names}. I write short sentences and then "
                   f"check each constraint one by one.</think>{s['reference_response']}")
    return [{"role": "user", "content": s["prompt"]}, {"role": "assistant", "content": content}]


__all__ = ["CLAIMS", "CLASHES", "CONSTRAINED_OPTIONS", "DESCRIPTIONS", "END_PHRASES", "EXISTENCE_SENTENCE",
           "EXTRA_CLASHES", "FIRST_WORDS", "FORBIDDEN_EXTRA", "IFEVAL_CONFLICTS", "KEYWORDS", "LANGUAGES", "LAYOUTS",
           "LETTERS", "PLACEHOLDERS", "POSTSCRIPTS", "P_SECOND", "QUESTIONS", "SENTENCES", "TASKS", "TITLES", "TOPICS",
           "TYPES", "WEIGHTS", "capital_words", "clash", "demonstration", "draw_ids", "forbidden_candidates", "make",
           "respond", "sample"]
