"""Instruction following: short writing prompts with IFEval-style constraints, all 25 of IFEval's instruction types.

Fields: ``instruction_id_list`` and ``kwargs`` (one dict per instruction, IFEval's argument names), and
``reference_response`` (a response that meets every constraint, used for SFT demonstrations).

A prompt is a task ("Write about cats.") followed by one or two instruction descriptions in the wording of
google-research's ``instruction_following_eval`` (``DESCRIPTIONS``). Two instructions are never drawn together when
they clash (``CLASHES``: IFEval's own conflict table, made symmetric, plus the pairs this generator does not compose,
each with its reason in ``EXTRA_CLASHES``).

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
import string

# ---------------------------------------------------------------- content
TOPICS = ("cats", "rain", "bread", "trees", "music", "the sea")
# topic -> language -> four short sentences (each one alone is recognisable as its language by rewards.langdetect)
SENTENCES = {
    "cats": {
        "en": ["Cats are small animals with soft fur.", "They like to sleep in the sun.",
               "A cat can hear very well at night.", "Cats clean their fur with their tongue."],
        "es": ["Los gatos son animales pequeños y muy suaves.", "Les gusta dormir al sol todo el día.",
               "Un gato puede oír muy bien en la noche.", "Los gatos limpian su pelo con la lengua."],
        "fr": ["Les chats sont de petits animaux.", "Ils dorment au soleil pendant des heures.",
               "Un chat entend très bien la nuit.", "Les chats lavent leur poil avec la langue."],
        "de": ["Die Katzen sind kleine Tiere mit weichem Fell.", "Sie schlafen gern in der Sonne.",
               "Eine Katze hört sehr gut in der Nacht.", "Die Katzen putzen ihr Fell mit der Zunge."]},
    "rain": {
        "en": ["Rain falls from the clouds.", "It helps the plants grow.", "The streets get wet and shiny.",
               "Rain makes a soft sound on the roof."],
        "es": ["La lluvia cae de las nubes.", "Con la lluvia las plantas crecen.",
               "Las calles se ponen mojadas y brillantes.", "La lluvia hace un ruido suave en el techo."],
        "fr": ["La pluie tombe des nuages.", "Elle aide les plantes à pousser.",
               "Les rues sont mouillées et brillantes.", "La pluie fait un bruit doux sur le toit."],
        "de": ["Der Regen fällt aus den Wolken.", "Er ist gut für die Pflanzen.",
               "Die Straßen werden nass und glänzend.", "Der Regen macht ein leises Geräusch auf dem Dach."]},
    "bread": {
        "en": ["Bread is made from flour and water.", "It is baked in a hot oven.",
               "The smell of fresh bread is nice.", "People eat it with butter and jam."],
        "es": ["El pan se hace con harina y agua.", "Se cuece en un horno muy caliente.",
               "El olor del pan fresco es muy bueno.", "Las personas lo comen con mantequilla y mermelada."],
        "fr": ["Le pain est fait avec de la farine.", "Il est cuit dans un four chaud.",
               "Le pain frais sent très bon.", "Les gens le mangent avec du beurre."],
        "de": ["Das Brot wird aus Mehl und Wasser gemacht.", "Es wird in einem heißen Ofen gebacken.",
               "Das frische Brot riecht auch sehr gut.", "Die Leute essen es mit Butter."]},
    "trees": {
        "en": ["Trees are tall plants with deep roots.", "They give us shade in the summer.",
               "Their leaves turn red in the fall.", "Birds build their nests in trees."],
        "es": ["Los árboles son plantas muy altas.", "Nos dan sombra en el verano.",
               "Sus hojas se ponen rojas en otoño.", "Los pájaros hacen sus nidos en los árboles."],
        "fr": ["Les arbres sont des plantes très hautes.", "Ils nous donnent de l'ombre en été.",
               "En automne les feuilles sont rouges.", "Les oiseaux font leur nid dans les arbres."],
        "de": ["Die Bäume sind hohe Pflanzen.", "Sie geben uns Schatten im Sommer.",
               "Im Herbst werden die Blätter rot.", "Die Vögel bauen auf den Bäumen ihre Nester."]},
    "music": {
        "en": ["Music is made of many sounds.", "People sing and dance to it.", "A good song can make you happy.",
               "Some music is slow and calm."],
        "es": ["La música se hace con muchos sonidos y notas.", "La gente canta y baila con ella.",
               "Una canción puede hacerte muy feliz.", "Hay música lenta y tranquila."],
        "fr": ["La musique est faite de sons.", "Les gens chantent et dansent avec elle.",
               "Une chanson peut rendre très heureux.", "Il y a de la musique lente et calme."],
        "de": ["Die Musik ist aus vielen Tönen gemacht.", "Die Leute singen und tanzen dazu.",
               "Ein Lied macht uns froh und glücklich.", "Manche Musik ist langsam und ruhig."]},
    "the sea": {
        "en": ["The sea is very large and deep.", "It is full of fish and plants.", "Waves move all day and all night.",
               "The water of the sea is salty."],
        "es": ["El mar es muy grande y profundo.", "Hay muchos peces y plantas en el mar.",
               "Las olas se mueven todo el día.", "El agua del mar es salada."],
        "fr": ["La mer est très grande et profonde.", "Elle est pleine de poissons.",
               "Les vagues bougent toute la journée.", "L'eau de la mer est salée."],
        "de": ["Das Meer ist sehr groß und tief.", "Es ist voll von Fischen und Pflanzen.",
               "Die Wellen bewegen sich den ganzen Tag.", "Das Wasser im Meer ist salzig."]},
}
TITLES = {"cats": {"en": "Cats", "es": "Los gatos", "fr": "Les chats", "de": "Die Katzen"},
          "rain": {"en": "Rain", "es": "La lluvia", "fr": "La pluie", "de": "Der Regen"},
          "bread": {"en": "Bread", "es": "El pan", "fr": "Le pain", "de": "Das Brot"},
          "trees": {"en": "Trees", "es": "Los árboles", "fr": "Les arbres", "de": "Die Bäume"},
          "music": {"en": "Music", "es": "La música", "fr": "La musique", "de": "Die Musik"},
          "the sea": {"en": "The Sea", "es": "El mar", "fr": "La mer", "de": "Das Meer"}}
# yes/no questions for constrained_response: (true claims, false claims)
CLAIMS = {"cats": (["cats are small animals", "cats can hear very well"], ["cats can fly", "cats live in the sea"]),
          "rain": (["rain falls from the clouds", "rain helps plants grow"],
                   ["rain falls from the ground", "rain makes the streets dry"]),
          "bread": (["bread is made from flour", "bread is baked in an oven"],
                    ["bread is made from stone", "bread grows on trees"]),
          "trees": (["trees are tall plants", "trees give us shade"], ["trees can walk", "trees are made of glass"]),
          "music": (["music is made of sounds", "music can make you happy"],
                    ["music is made of stone", "music is a kind of fish"]),
          "the sea": (["the sea is full of fish", "the water of the sea is salty"],
                      ["the sea is very small", "the water of the sea is sweet"])}
LANGUAGES = {"es": "Spanish", "fr": "French", "de": "German"}
POSTSCRIPTS = {"en": "I like {topic}.", "es": "Gracias por leer todo esto.", "fr": "Merci de lire ce texte.",
               "de": "Danke für das Lesen."}
PLACEHOLDERS = {"en": ("Come with [name]", " to [place]", " on [date]"),
                "es": ("Ven con [nombre]", " a [lugar]", " el [fecha]"),
                "fr": ("Viens avec [nom]", " à [lieu]", " le [date]"),
                "de": ("Komm mit [Name]", " nach [Ort]", " am [Datum]")}
FIRST_WORDS = {"en": ["also", "then", "today", "sometimes"], "es": ["también", "hoy", "y"],
               "fr": ["et", "mais", "puis"], "de": ["und", "aber", "denn"]}
EXISTENCE_SENTENCE = "I think of {a} and {b}."
KEYWORDS = ["blue", "quiet", "morning", "friend", "simple", "warm", "green", "gentle"]
FORBIDDEN_EXTRA = ["bad", "boring", "ugly", "never", "hate"]   # words no response contains
END_PHRASES = ["Any other questions?", "Is there anything else I can help with?", "That is all.",
               "Thank you for reading."]
TASKS = ["Write a short text about {topic}.", "Tell me about {topic}.", "Write about {topic}."]
QUESTIONS = ["Is it true that {claim}?", "Do you think that {claim}?", "Would you say that {claim}?"]
CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
LETTERS = string.ascii_lowercase

# ---------------------------------------------------------------- the 25 instruction types
DESCRIPTIONS = {
    "keywords:existence": "Include keywords {keywords} in the response.",
    "keywords:frequency": "In your response, the word {keyword} should appear {relation} {frequency} times.",
    "keywords:forbidden_words": "Do not include keywords {forbidden_words} in the response.",
    "keywords:letter_frequency": "In your response, the letter {letter} should appear {let_relation} "
                                 "{let_frequency} times.",
    "language:response_language": "Your ENTIRE response should be in {language} language, no other language is "
                                  "allowed.",
    "length_constraints:number_sentences": "Your response should contain {relation} {num_sentences} sentences.",
    "length_constraints:number_paragraphs": "There should be {num_paragraphs} paragraphs. Paragraphs are separated "
                                            "with the markdown divider: ***",
    "length_constraints:number_words": "Answer with {relation} {num_words} words.",
    "length_constraints:nth_paragraph_first_word": "There should be {num_paragraphs} paragraphs. Paragraphs and only "
                                                   "paragraphs are separated with each other by two new lines as if "
                                                   "it was '\\n\\n' in python. Paragraph {nth_paragraph} must start "
                                                   "with word {first_word}.",
    "detectable_content:number_placeholders": "The response must contain at least {num_placeholders} placeholders "
                                              "represented by square brackets, such as [address].",
    "detectable_content:postscript": "At the end of your response, please explicitly add a postscript starting with "
                                     "{postscript_marker}",
    "detectable_format:number_bullet_lists": "Your answer must contain exactly {num_bullets} bullet points. Use the "
                                             "markdown bullet points such as:\n* This is point 1. \n* This is point 2",
    "detectable_format:constrained_response": "Answer with one of the following options: {options}",
    "detectable_format:number_highlighted_sections": "Highlight at least {num_highlights} sections in your answer "
                                                     "with markdown, i.e. *highlighted section*.",
    "detectable_format:multiple_sections": "Your response must have {num_sections} sections. Mark the beginning of "
                                           "each section with {section_spliter} X, such as:\n{section_spliter} 1\n"
                                           "[content of section 1]\n{section_spliter} 2\n[content of section 2]",
    "detectable_format:json_format": "Entire output should be wrapped in JSON format. You can use markdown ticks "
                                     "such as ```.",
    "detectable_format:title": "Your answer must contain a title, wrapped in double angular brackets, such as "
                               "<<poem of joy>>.",
    "combination:two_responses": "Give two different responses. Responses and only responses should be separated "
                                 "by 6 asterisk symbols: ******.",
    "combination:repeat_prompt": "First repeat the request word for word without change, then give your answer "
                                 "(1. do not say any words or characters before repeating the request; 2. the "
                                 "request you need to repeat does not include this sentence)",
    "startend:end_checker": "Finish your response with this exact phrase {end_phrase}{dot} No other words should "
                            "follow this phrase.",
    "startend:quotation": "Wrap your entire response with double quotation marks.",
    "change_case:capital_word_frequency": "In your response, words with all capital letters should appear "
                                          "{capital_relation} {capital_frequency} times.",
    "change_case:english_capital": "Your entire response should be in English, and in all capital letters.",
    "change_case:english_lowercase": "Your entire response should be in English, and in all lowercase letters. "
                                     "No capital letters are allowed.",
    "punctuation:no_comma": "In your entire response, refrain from the use of any commas.",
}
TYPES = tuple(DESCRIPTIONS)
# draw weights, fitted (for P_SECOND and CLASHES below) so that each type is in about 6.6% of the samples, the
# types that make long or unusual responses (another language, JSON, two responses, the repeated request, blank-line
# paragraphs, letter counts) in about 5.3%, and constrained_response (a one-line answer that never combines) in 3.3%:
# none dominates. Types that combine with almost everything (keywords, title) get less weight as a first draw.
WEIGHTS = {
    "keywords:existence": 0.57, "keywords:frequency": 1.04, "keywords:forbidden_words": 0.71,
    "keywords:letter_frequency": 0.81, "language:response_language": 0.84, "length_constraints:number_sentences": 1.04,
    "length_constraints:number_paragraphs": 1.13, "length_constraints:number_words": 1.01,
    "length_constraints:nth_paragraph_first_word": 0.88, "detectable_content:number_placeholders": 1.01,
    "detectable_content:postscript": 1.01, "detectable_format:number_bullet_lists": 1.13,
    "detectable_format:constrained_response": 0.82, "detectable_format:number_highlighted_sections": 1.05,
    "detectable_format:multiple_sections": 1.19, "detectable_format:json_format": 1.27, "detectable_format:title": 0.71,
    "combination:two_responses": 1.19, "combination:repeat_prompt": 1.27, "startend:end_checker": 1.04,
    "startend:quotation": 1.06, "change_case:capital_word_frequency": 1.07, "change_case:english_capital": 1.09,
    "change_case:english_lowercase": 1.13, "punctuation:no_comma": 0.91}
P_SECOND = 0.55   # chance of a second instruction

# ---------------------------------------------------------------- which instructions cannot go together
_ALL = set(TYPES)
# google-research instruction_following_eval/instructions_registry.py INSTRUCTION_CONFLICTS (before conflict_make)
IFEVAL_CONFLICTS = {
    "keywords:existence": {"keywords:existence"},
    "keywords:frequency": {"keywords:frequency"},
    "keywords:forbidden_words": {"keywords:forbidden_words"},
    "keywords:letter_frequency": {"keywords:letter_frequency"},
    "language:response_language": {"language:response_language", "detectable_format:multiple_sections",
                                   "keywords:existence", "keywords:frequency", "keywords:forbidden_words",
                                   "startend:end_checker", "change_case:english_capital",
                                   "change_case:english_lowercase"},
    "length_constraints:number_sentences": {"length_constraints:number_sentences"},
    "length_constraints:number_paragraphs": {"length_constraints:number_paragraphs",
                                             "length_constraints:nth_paragraph_first_word",
                                             "length_constraints:number_sentences"},
    "length_constraints:number_words": {"length_constraints:number_words"},
    "length_constraints:nth_paragraph_first_word": {"length_constraints:nth_paragraph_first_word",
                                                    "length_constraints:number_paragraphs"},
    "detectable_content:number_placeholders": {"detectable_content:number_placeholders"},
    "detectable_content:postscript": {"detectable_content:postscript"},
    "detectable_format:number_bullet_lists": {"detectable_format:number_bullet_lists"},
    "detectable_format:constrained_response": set(_ALL),
    "detectable_format:number_highlighted_sections": {"detectable_format:number_highlighted_sections"},
    "detectable_format:multiple_sections": {"detectable_format:multiple_sections", "language:response_language",
                                            "detectable_format:number_highlighted_sections"},
    "detectable_format:json_format": _ALL - {"keywords:forbidden_words", "keywords:existence"},
    "detectable_format:title": {"detectable_format:title"},
    "combination:two_responses": _ALL - {"keywords:forbidden_words", "keywords:existence",
                                         "language:response_language", "detectable_format:title",
                                         "punctuation:no_comma"},
    "combination:repeat_prompt": _ALL - {"keywords:existence", "detectable_format:title", "punctuation:no_comma"},
    "startend:end_checker": {"startend:end_checker"},
    "change_case:capital_word_frequency": {"change_case:capital_word_frequency", "change_case:english_lowercase",
                                           "change_case:english_capital"},
    "change_case:english_capital": {"change_case:english_capital"},
    "change_case:english_lowercase": {"change_case:english_lowercase", "change_case:english_capital"},
    "punctuation:no_comma": {"punctuation:no_comma"},
    "startend:quotation": {"startend:quotation", "detectable_format:title"},
}
# layouts: how the body is laid out; a response has at most one
LAYOUTS = ("length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word",
           "detectable_format:number_bullet_lists", "detectable_format:multiple_sections",
           "combination:two_responses", "detectable_format:json_format")
EXTRA_CLASHES = {
    **{frozenset((a, b)): "one layout per response (paragraphs, bullets, sections, two responses, JSON)"
       for i, a in enumerate(LAYOUTS) for b in LAYOUTS[i + 1:]},
    frozenset(("change_case:english_lowercase", "detectable_format:multiple_sections")):
        "lowercase turns the SECTION / Section marker into one the checker does not find",
    frozenset(("startend:quotation", "detectable_format:number_bullet_lists")):
        "the opening quotation mark would hide the first bullet's marker",
    frozenset(("combination:repeat_prompt", "punctuation:no_comma")):
        "the request to repeat word for word holds a comma (the no_comma description itself has one)",
}
CLASHES: set[frozenset] = {frozenset((a, b)) for a, bs in IFEVAL_CONFLICTS.items() for b in bs if a != b} | \
    set(EXTRA_CLASHES)


def clash(a: str, b: str) -> bool:
    """Whether instructions ``a`` and ``b`` are never drawn together (an instruction also clashes with itself)."""
    return a == b or frozenset((a, b)) in CLASHES


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
