"""The instruction-following generator's tables (``rewards.tasks.instruct`` draws from them and re-exports them).

* **content** -- the topics, four short sentences per topic in English, Spanish, French and German (each one alone is
  recognisable as its language by ``rewards.langdetect``), titles, yes/no claims, postscripts, placeholders, first
  words, keywords, end phrases, task and question wordings;
* **the 25 instruction types** -- ``DESCRIPTIONS`` (each type's wording, from google-research's
  ``instruction_following_eval``), ``TYPES``, the draw ``WEIGHTS`` and ``P_SECOND`` (the chance of a second
  instruction);
* **clashes** -- which two instructions are never drawn together: ``IFEVAL_CONFLICTS`` (IFEval's own table),
  ``EXTRA_CLASHES`` (the pairs the generator does not compose, each with its reason), ``CLASHES`` (both, symmetric)
  and ``clash(a, b)``.
"""
from __future__ import annotations

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
