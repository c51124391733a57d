"""Instruction following: short writing prompts with IFEval-style constraints.

Fields: ``instruction_id_list`` and ``kwargs`` (one dict per instruction, IFEval's argument names), and
``reference_response`` (a response that meets every constraint, used for SFT demonstrations).
"""
from __future__ import annotations

import random

TOPICS = {
    "cats": ["cats are small animals", "they like to sleep in the sun", "a cat can hear very well"],
    "rain": ["rain falls from clouds", "it helps plants grow", "the streets get wet and shiny"],
    "bread": ["bread is made from flour", "it is baked in an oven", "fresh bread smells good"],
    "trees": ["trees are tall plants", "they give us shade", "their leaves turn red in fall"],
    "music": ["music is made of sounds", "people sing and dance to it", "a song can make you happy"],
    "the sea": ["the sea is very large", "it is full of fish", "waves move all day long"],
}
END_PHRASES = ["Is there anything else I can help with?", "That is all.", "Thank you for reading."]
KEYWORDS = ["blue", "quiet", "morning", "friend", "simple", "warm"]

# instruction id -> (phrase template, kwargs sampler)
CONSTRAINTS = {
    "change_case:english_lowercase": "Your entire response should be in English, and in all lowercase letters.",
    "change_case:english_capital": "Your entire response should be in English, and in all capital letters.",
    "punctuation:no_comma": "Do not use any commas in your response.",
    "startend:end_checker": "Finish your response with this exact phrase: {end_phrase}",
    "detectable_format:title": "Include a title wrapped in double angular brackets, such as <<my title>>.",
    "detectable_content:postscript": "At the end of your response, add a postscript starting with {postscript_marker}",
    "keywords:existence": "Include the keywords {kw} in the response.",
    "startend:quotation": "Wrap your entire response with double quotation marks.",
}
# pairs that cannot hold together
CLASHES = [{"change_case:english_lowercase", "change_case:english_capital"},
           {"change_case:english_capital", "keywords:existence"},
           {"change_case:english_lowercase", "detectable_content:postscript"},
           {"change_case:english_capital", "detectable_content:postscript"},
           {"change_case:english_lowercase", "startend:end_checker"},
           {"change_case:english_capital", "startend:end_checker"},
           {"startend:quotation", "startend:end_checker"},
           {"startend:quotation", "detectable_content:postscript"},
           {"startend:end_checker", "detectable_content:postscript"}]


def _kwargs(iid: str, rng: random.Random) -> dict:
    if iid == "startend:end_checker":
        return {"end_phrase": rng.choice(END_PHRASES)}
    if iid == "detectable_content:postscript":
        return {"postscript_marker": "P.S."}
    if iid == "keywords:existence":
        return {"keywords": rng.sample(KEYWORDS, 2)}
    return {}


def _phrase(iid: str, kw: dict) -> str:
    t = CONSTRAINTS[iid]
    if iid == "keywords:existence":
        return t.format(kw=" and ".join(kw["keywords"]))
    return t.format(**kw)


def sample(rng: random.Random) -> dict:
    topic = rng.choice(sorted(TOPICS))
    ids = [rng.choice(sorted(CONSTRAINTS))]
    if rng.random() < 0.6:
        second = rng.choice(sorted(set(CONSTRAINTS) - set(ids)))
        if not any({ids[0], second} <= c for c in CLASHES):
            ids.append(second)
    kwargs = [_kwargs(i, rng) for i in ids]
    n_sent = rng.randint(2, 3)
    prompt = f"Write {n_sent} sentences about {topic}. " + " ".join(_phrase(i, k) for i, k in zip(ids, kwargs))
    return {"prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs,
            "reference_response": respond(topic, n_sent, ids, kwargs)}


def respond(topic: str, n_sent: int, ids: list[str], kwargs: list[dict]) -> str:
    """A response that satisfies every constraint (what a perfect model would write)."""
    sents = [s[0].upper() + s[1:] + "." for s in TOPICS[topic][:n_sent]]
    kw = dict(zip(ids, kwargs))
    if "keywords:existence" in kw:
        sents[-1] = sents[-1][:-1] + " on a " + " and ".join(kw["keywords:existence"]["keywords"]) + " day."
    text = " ".join(sents)
    if "punctuation:no_comma" in kw:
        text = text.replace(",", "")
    if "detectable_format:title" in kw:
        text = f"<<{topic.title()}>>\n{text}"
    if "startend:end_checker" in kw:
        text += " " + kw["startend:end_checker"]["end_phrase"]
    if "detectable_content:postscript" in kw:
        text += "\n\nP.S. I like " + topic + "."
    if "change_case:english_lowercase" in kw:
        text = text.lower()
    if "change_case:english_capital" in kw:
        text = text.upper()
    if "startend:quotation" in kw:
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
