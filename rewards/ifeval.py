"""Instruction-following verifier: IFEval's 25 instruction types, strict and loose, all-or-nothing and fraction.

Offline and deterministic, unlike the reference code in three ways (see docs/rewards.md):
  * a missing or ``None`` argument makes that check **fail** (``error: missing argument``) — never a random threshold;
  * language detection is an offline script + stop-word heuristic that returns ``None`` when unsure, and an
    undetected language **fails** the check (the reference returns True when detection raises);
  * sentences are counted by our own splitter (no NLTK punkt data).

Sample fields: ``instruction_id_list`` and ``kwargs`` (one dict per instruction). Optional ``ifeval_scoring`` picks
the score among ``strict_all`` (default), ``strict_fraction``, ``loose_all``, ``loose_fraction``; all four are
always reported in ``details``. ``repeat_prompt`` without ``prompt_to_repeat`` falls back to the sample's ``prompt``.
IFBench's instruction ids (``rewards/ifbench.py``, registered in ``IFBENCH_CHECKERS``) are scored the same way.
"""
from __future__ import annotations

import json
import re
from typing import Callable

from .base import Verdict, answer_part, fail, register_verifier
from .langdetect import detect_language, words

SCORINGS = ("strict_all", "strict_fraction", "loose_all", "loose_fraction")


class MissingArgument(Exception):
    pass


def _arg(kw: dict, name: str, kind=None):
    v = kw.get(name)
    if v is None:
        raise MissingArgument(name)
    if kind is int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
            raise MissingArgument(f"{name} (not an integer)")
        return int(v)
    if kind is str and not isinstance(v, str):
        raise MissingArgument(f"{name} (not a string)")
    return v


def _relation(kw: dict, name: str) -> str:
    rel = _arg(kw, name, str)
    if rel not in ("less than", "at least"):
        raise MissingArgument(f"{name} must be 'less than' or 'at least'")
    return rel


def _compare(count: int, rel: str, n: int) -> bool:
    return count < n if rel == "less than" else count >= n


# ---------------------------------------------------------------- text utilities (no NLTK)
_ABBREV = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "u.s", "u.k", "inc", "ltd",
           "co", "no", "fig", "al", "approx", "dept", "est", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
           "sept", "oct", "nov", "dec", "mt", "ave", "gen", "col", "lt", "sgt", "capt", "gov", "rev", "a.m", "p.m"}
_SENT_END = re.compile(r"([.!?。！？]+)([\"'”’)\]]*)(\s+|$)")


def split_sentences(text: str) -> list[str]:
    """Sentences: split after . ! ? (and CJK marks) followed by space/end, not after abbreviations or initials;
    blank lines and line-broken list items also end a sentence. Segments without a letter or digit are dropped."""
    out = []
    for block in re.split(r"\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)", text):
        start = 0
        for m in _SENT_END.finditer(block):
            end = m.end()
            if m.group(1) == ".":
                before = block[start:m.start()].split()
                last = before[-1].lower().strip("(\"'") if before else ""
                nxt = block[end:end + 1]
                if last in _ABBREV or re.fullmatch(r"[a-z]", last) or (nxt and nxt.islower()):
                    continue
            out.append(block[start:end].strip())
            start = end
        out.append(block[start:].strip())
    return [s for s in out if any(c.isalnum() for c in s)]


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


_words = words


# ---------------------------------------------------------------- the 25 checkers: fn(response, kwargs, sample)
CHECKERS: dict[str, Callable[[str, dict, dict], bool]] = {}


IFBENCH_CHECKERS: dict[str, Callable[[str, dict, dict], bool]] = {}   # IFBench's ids, filled by rewards/ifbench.py


def checker(iid: str):
    def deco(fn):
        CHECKERS[iid] = fn
        return fn
    return deco


@checker("keywords:existence")
def _existence(r, kw, s):
    keywords = _arg(kw, "keywords")
    if not isinstance(keywords, list) or not keywords:
        raise MissingArgument("keywords")
    return all(re.search(re.escape(str(k)), r, re.I) for k in keywords)


@checker("keywords:frequency")
def _frequency(r, kw, s):
    word, n, rel = _arg(kw, "keyword", str), _arg(kw, "frequency", int), _relation(kw, "relation")
    return _compare(len(re.findall(re.escape(word), r, re.I)), rel, n)


@checker("keywords:forbidden_words")
def _forbidden(r, kw, s):
    words = _arg(kw, "forbidden_words")
    if not isinstance(words, list):
        raise MissingArgument("forbidden_words")
    return not any(re.search(r"\b" + re.escape(str(w)) + r"\b", r, re.I) for w in words)


@checker("keywords:letter_frequency")
def _letter_freq(r, kw, s):
    letter, n, rel = _arg(kw, "letter", str), _arg(kw, "let_frequency", int), _relation(kw, "let_relation")
    if len(letter) != 1:
        raise MissingArgument("letter (must be one character)")
    return _compare(r.lower().count(letter.lower()), rel, n)


@checker("language:response_language")
def _language(r, kw, s):
    want = _arg(kw, "language", str).lower()
    return detect_language(r) == want


@checker("length_constraints:number_sentences")
def _n_sentences(r, kw, s):
    n, rel = _arg(kw, "num_sentences", int), _relation(kw, "relation")
    return _compare(len(split_sentences(r)), rel, n)


@checker("length_constraints:number_paragraphs")
def _n_paragraphs(r, kw, s):
    n = _arg(kw, "num_paragraphs", int)
    parts = re.split(r"\s?\*\*\*\s?", r)
    count = len(parts)
    for i, p in enumerate(parts):
        if not p.strip():
            if i == 0 or i == len(parts) - 1:
                count -= 1
            else:
                return False
    return count == n


@checker("length_constraints:number_words")
def _n_words(r, kw, s):
    n, rel = _arg(kw, "num_words", int), _relation(kw, "relation")
    return _compare(count_words(r), rel, n)


@checker("length_constraints:nth_paragraph_first_word")
def _nth_first_word(r, kw, s):
    n, nth, first = _arg(kw, "num_paragraphs", int), _arg(kw, "nth_paragraph", int), _arg(kw, "first_word", str)
    paragraphs = [p for p in re.split(r"\n\n", r)]
    count = sum(1 for p in paragraphs if p.strip())
    if count != n or not 1 <= nth <= len(paragraphs):
        return False
    para = [p for p in paragraphs if p.strip()][nth - 1].strip()
    if not para:
        return False
    word = para.split()[0].strip()
    word = re.sub(r"^[\W_]+|[\W_]+$", "", word).lower()
    return word == first.strip().lower()


@checker("detectable_content:number_placeholders")
def _placeholders(r, kw, s):
    return len(re.findall(r"\[.*?\]", r)) >= _arg(kw, "num_placeholders", int)


@checker("detectable_content:postscript")
def _postscript(r, kw, s):
    marker = _arg(kw, "postscript_marker", str).strip()
    low = r.lower()
    if marker == "P.P.S":
        pat = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pat = r"\s*p\.\s?s\..*$"
    else:
        pat = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(marker) and bool(re.findall(pat, low, flags=re.M))


@checker("detectable_format:number_bullet_lists")
def _bullets(r, kw, s):
    n = _arg(kw, "num_bullets", int)
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.M)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.M)
    return len(stars) + len(dashes) == n


@checker("detectable_format:constrained_response")
def _constrained(r, kw, s):
    return any(opt in r.strip() for opt in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


@checker("detectable_format:number_highlighted_sections")
def _highlights(r, kw, s):
    n = _arg(kw, "num_highlights", int)
    count = sum(1 for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip())
    count += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip())
    return count >= n


@checker("detectable_format:multiple_sections")
def _sections(r, kw, s):
    splitter, n = _arg(kw, "section_spliter", str).strip(), _arg(kw, "num_sections", int)
    if not splitter:
        raise MissingArgument("section_spliter")
    parts = re.split(r"\s?" + re.escape(splitter) + r"\s?\d+\s?", r)
    return len(parts) - 1 >= n


@checker("detectable_format:json_format")
def _json(r, kw, s):
    v = r.strip()
    for p in ("```json", "```Json", "```JSON", "```"):
        if v.startswith(p):
            v = v[len(p):]
            break
    v = v.removesuffix("```").strip()
    try:
        json.loads(v)
    except (ValueError, RecursionError):
        return False
    return True


@checker("detectable_format:title")
def _title(r, kw, s):
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


@checker("combination:two_responses")
def _two_responses(r, kw, s):
    parts = r.split("******")
    valid = []
    for i, p in enumerate(parts):
        if not p.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(p)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


@checker("combination:repeat_prompt")
def _repeat_prompt(r, kw, s):
    p = kw.get("prompt_to_repeat")
    if p is None:
        p = s.get("prompt")
    if not isinstance(p, str) or not p.strip():
        raise MissingArgument("prompt_to_repeat")
    return r.strip().lower().startswith(p.strip().lower())


@checker("startend:end_checker")
def _end(r, kw, s):
    phrase = _arg(kw, "end_phrase", str).strip().lower()
    return bool(phrase) and r.strip().strip('"').lower().endswith(phrase)


@checker("startend:quotation")
def _quotation(r, kw, s):
    v = r.strip()
    return len(v) > 1 and v[0] == '"' and v[-1] == '"'


@checker("change_case:capital_word_frequency")
def _capital_freq(r, kw, s):
    n, rel = _arg(kw, "capital_frequency", int), _relation(kw, "capital_relation")
    words = re.findall(r"\b\w+\b", r)
    return _compare(sum(1 for w in words if w.isupper()), rel, n)


@checker("change_case:english_capital")
def _english_capital(r, kw, s):
    return r.isupper() and detect_language(r) == "en"


@checker("change_case:english_lowercase")
def _english_lower(r, kw, s):
    return r.islower() and detect_language(r) == "en"


@checker("punctuation:no_comma")
def _no_comma(r, kw, s):
    return "," not in r


assert len(CHECKERS) == 25, len(CHECKERS)


# ---------------------------------------------------------------- scoring
def loose_variants(response: str) -> list[str]:
    """IFEval's loose variants: drop the first and/or last line, and/or remove markdown asterisks."""
    lines = response.split("\n")
    base = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [v for v in base + [b.replace("*", "") for b in base] if v.strip()]


def evaluate(response: str, ids: list, kwargs: list, sample: dict | None = None) -> dict:
    """Per-instruction strict and loose results plus the four scores."""
    sample = sample or {}
    strict, loose, errors = [], [], {}
    variants = loose_variants(response)
    for i, iid in enumerate(ids):
        kw = kwargs[i] if i < len(kwargs) and isinstance(kwargs[i], dict) else {}
        kw = {k: v for k, v in kw.items() if v is not None}
        fn = CHECKERS.get(iid) or IFBENCH_CHECKERS.get(iid)
        if fn is None:
            errors[iid] = "unknown instruction"
            strict.append(False)
            loose.append(False)
            continue
        try:
            st = bool(response.strip()) and fn(response, kw, sample)
            lo = st or any(fn(v, kw, sample) for v in variants)
        except MissingArgument as e:
            errors[iid] = f"missing argument: {e}"
            st = lo = False
        strict.append(bool(st))
        loose.append(bool(lo))
    n = max(len(ids), 1)
    return {"strict": strict, "loose": loose, "errors": errors,
            "strict_all": float(bool(ids) and all(strict)), "strict_fraction": sum(strict) / n,
            "loose_all": float(bool(ids) and all(loose)), "loose_fraction": sum(loose) / n}


@register_verifier("instruct", isolation="worker")
def verify_instruct(completion: str, sample: dict, mode: str) -> Verdict:
    answer, ok, err = answer_part(completion, mode)
    if not ok:
        return fail(err, format_ok=False)
    ids = sample.get("instruction_id_list")
    kwargs = sample.get("kwargs") or []
    if not isinstance(ids, list) or not ids:
        return fail("sample has no instruction_id_list", format_ok=True)
    if not isinstance(kwargs, list):
        return fail("kwargs must be a list of objects", format_ok=True)
    scoring = sample.get("ifeval_scoring") or "strict_all"
    if scoring not in SCORINGS:
        return fail(f"unknown ifeval_scoring {scoring!r}", format_ok=True)
    res = evaluate(answer, ids, kwargs, sample)
    failed = [iid for iid, ok_ in zip(ids, res["loose" if scoring.startswith("loose") else "strict"]) if not ok_]
    details = {"format_ok": True, "extracted": answer[:500], "failed_checks": failed, "scoring": scoring,
               "error": "; ".join(f"{k}: {v}" for k, v in res["errors"].items()) or None,
               **{k: res[k] for k in SCORINGS}}
    return Verdict(res[scoring], details)


from . import ifbench  # noqa: E402,F401  (registers IFBench's checkers in IFBENCH_CHECKERS)
