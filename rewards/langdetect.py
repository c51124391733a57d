"""Offline language detection for IFEval's ``language:response_language`` (no model, no download): stop-word hits
for Latin-script languages and Unicode scripts for the others. It fails closed: ``None`` when unsure, which the
checker counts as a failure (the reference implementation passes when its detector raises -- exploitable).
"""
from __future__ import annotations

import re
import unicodedata


def words(text: str) -> list[str]:
    """Alphabetic words (an apostrophe inside a word keeps it whole)."""
    return re.findall(r"[^\W\d_]+(?:['’][^\W\d_]+)?", text)

_STOP = {
    "en": "the and is are was were to of in that it for on with as this be have not you they at by from but or an "
          "what all can we there their which will would has had been one do if about so",
    "es": "el la los las de que y en un una es por con para no se su al lo como más pero sus le ya o este sí porque "
          "esta entre cuando muy sin sobre también me hasta hay donde quien desde todo nos durante",
    "fr": "le la les de des et est un une du en que qui dans pour pas sur au avec ce il elle ne se plus par son sont "
          "mais ou nous vous ont cette être aux leur très été",
    "de": "der die das und ist nicht ein eine zu den von mit sich des auf für im dem auch es an als wird bei er sie "
          "sind noch wie einem über einen so zum war haben nur oder aber vor zur bis mehr durch man",
    "it": "il la di che e è un una per non in del della le sono con si da gli lo ma come anche al più nel questo "
          "dei alla molto essere ha hanno",
    "pt": "o a os as de que e do da em um uma para com não é se na por mais dos como mas ao ele das foi seu sua ou "
          "quando muito nos já está também só pelo pela até isso ela entre",
    "nl": "de het een en van is dat op te in niet zijn voor met die er aan ook als maar om dan wat bij nog wel door "
          "geen hij ze",
    "sv": "och att det som en på är av för med till den har de inte om ett men var jag så från sig när vi kan",
    "da": "og at det som en på er af for med til den har de ikke om et men var jeg så fra sig når vi kan",
    "no": "og at det som en på er av for med til den har de ikke om et men var jeg så fra seg når vi kan",
    "fi": "ja on ei se että hän oli ovat kun mutta tai myös joka ole mitä sen niin kuin vain tämä",
    "pl": "i w nie na się z do że jest to jak ale o co po tak dla od być są jego przez tylko czy",
    "tr": "ve bir bu da de için ile çok ne daha gibi ama olarak var değil mi ki sonra kadar her en",
    "id": "yang dan di ini itu dengan untuk tidak dari dalam akan pada juga ke ada adalah bisa oleh",
    "sw": "na ya wa kwa ni za katika la kuwa hii cha vya au lakini pia sana kama",
    "vi": "và của là có không những được các cho người một trong với này đã khi như để",
    "ro": "și în de la nu este o un că cu pe care mai din pentru sunt se ca",
    "cs": "a se v na je že to s z o do jako ale pro by jsou tak",
}
_STOPSETS = {k: set(v.split()) for k, v in _STOP.items()}
_DEVANAGARI_STOP = {"hi": {"है", "के", "में", "और", "की", "से", "को", "का", "हैं", "यह", "पर", "नहीं"},
                    "mr": {"आहे", "आणि", "च्या", "या", "हे", "ते", "आहेत", "म्हणून", "नाही", "होते"},
                    "ne": {"छ", "र", "हो", "को", "मा", "पनि", "गर्न", "छन्", "थियो", "भएको"}}


def _script(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    o = ord(ch)
    if o < 0x250 or 0x1E00 <= o < 0x1F00:
        return "Latin"
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return None
    for s in ("CYRILLIC", "GREEK", "ARABIC", "HEBREW", "DEVANAGARI", "BENGALI", "GURMUKHI", "GUJARATI", "TAMIL",
              "TELUGU", "KANNADA", "MALAYALAM", "THAI", "HANGUL", "HIRAGANA", "KATAKANA", "CJK", "GEORGIAN",
              "ARMENIAN", "ETHIOPIC", "SINHALA", "KHMER", "LAO", "MYANMAR"):
        if name.startswith(s):
            return s
    return None


_SCRIPT_LANG = {"GREEK": "el", "HEBREW": "he", "BENGALI": "bn", "GURMUKHI": "pa", "GUJARATI": "gu", "TAMIL": "ta",
                "TELUGU": "te", "KANNADA": "kn", "MALAYALAM": "ml", "THAI": "th", "HANGUL": "ko", "GEORGIAN": "ka",
                "ARMENIAN": "hy", "ETHIOPIC": "am", "SINHALA": "si", "KHMER": "km", "LAO": "lo", "MYANMAR": "my"}


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of ``text``'s language, or None when it cannot be told reliably (callers must fail)."""
    counts: dict[str, int] = {}
    for ch in text:
        s = _script(ch)
        if s:
            counts[s] = counts.get(s, 0) + 1
    total = sum(counts.values())
    if total < 10:
        return None
    script, n = max(counts.items(), key=lambda kv: kv[1])
    if script in ("HIRAGANA", "KATAKANA", "CJK"):
        kana = counts.get("HIRAGANA", 0) + counts.get("KATAKANA", 0)
        han = counts.get("CJK", 0)
        if (kana + han) / total < 0.6:
            return None
        return "ja" if kana >= 0.05 * (kana + han) else "zh"
    if n / total < 0.6:
        return None
    if script in _SCRIPT_LANG:
        return _SCRIPT_LANG[script]
    if script == "CYRILLIC":
        return "uk" if re.search(r"[іїєґІЇЄҐ]", text) else "ru"
    if script == "ARABIC":
        if re.search(r"[ٹڈڑںےھ]", text):
            return "ur"
        if re.search(r"[پچژگیک]", text):
            return "fa"
        return "ar"
    ws = [w.lower() for w in words(text)]
    if script == "DEVANAGARI":
        hits = {k: sum(w in v for w in ws) for k, v in _DEVANAGARI_STOP.items()}
        return _best(hits, len(ws))
    hits = {k: sum(w in v for w in ws) for k, v in _STOPSETS.items()}
    return _best(hits, len(ws))


def _best(hits: dict, n_words: int) -> str | None:
    ranked = sorted(hits.items(), key=lambda kv: -kv[1])
    (lang, h1), h2 = ranked[0], ranked[1][1] if len(ranked) > 1 else 0
    if n_words < 3 or h1 < 2 or h1 / n_words < 0.08 or h1 < 1.3 * h2:
        return None
    # Danish and Norwegian share most function words: accept either when they tie with each other
    return lang
