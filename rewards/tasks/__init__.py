"""Seeded procedural task generators for the four domains, with disjoint train and held-out splits.

Every sample is a plain dict with ``id``, ``domain`` and ``prompt`` (the user message) plus the fields of its domain
(see each module). ``generate`` returns lists of dicts; ``as_dataset`` wraps them as a ``datasets.Dataset``.
``demonstration(sample, mode)`` gives the SFT conversation for one of the three reasoning modes.

The split is decided by a hash of the prompt, so held-out prompts never appear in training whatever the sizes.
"""
from __future__ import annotations

import hashlib
import json
import random
from typing import Callable

from . import agent, code, instruct, math

DOMAINS = ("math", "code", "agent", "instruct")
_MODULES = {"math": math, "code": code, "agent": agent, "instruct": instruct}
SPLITS = ("train", "test")


def _module(domain: str):
    if domain not in _MODULES:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    return _MODULES[domain]


def _split_of(prompt: str) -> str:
    h = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
    return "test" if h % 8 == 0 else "train"


def generator_params(domain: str) -> set[str]:
    """The keyword parameters ``domain``'s generator accepts (e.g. math's ``max_n``)."""
    import inspect

    return set(list(inspect.signature(_module(domain).sample).parameters)[1:])


def generate(domain: str, split: str, n: int, seed: int = 0, params: dict | None = None) -> list[dict]:
    """``n`` distinct samples of ``domain`` belonging to ``split``, reproducible from ``seed``; ``params`` go to
    the domain's generator (see :func:`generator_params`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected train or test")
    mod = _module(domain)
    params = dict(params or {})
    unknown = set(params) - generator_params(domain)
    if unknown:
        raise ValueError(f"tasks.{domain}.params: unknown {sorted(unknown)} "
                         f"(the {domain} generator takes {sorted(generator_params(domain)) or 'none'})")
    rng = random.Random(f"{domain}:{seed}:{split}")
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 200 * max(n, 10):
            raise ValueError(f"{domain}: cannot generate {n} distinct {split} samples (got {len(out)})")
        try:
            s = mod.sample(rng, **params)
        except ValueError as e:
            raise ValueError(f"tasks.{domain}.params: {e}") from None
        key = json.dumps(s, sort_keys=True)
        if key in seen or _split_of(s["prompt"]) != split:
            continue
        seen.add(key)
        s["id"] = f"{domain}/{split}/{len(out)}"
        s["domain"] = domain
        out.append(s)
    return out


def as_dataset(samples: list[dict]):
    import datasets

    return datasets.Dataset.from_list(samples)


def demonstration(sample: dict, mode: str) -> list[dict]:
    """The SFT conversation (messages after the system prompt) for ``sample`` in ``mode``."""
    return _module(sample["domain"]).demonstration(sample, mode)


def system_message(domain: str) -> str | None:
    return getattr(_module(domain), "SYSTEM", None)


def system_prompt(sample: dict, system: str | None = None) -> str | None:
    """The system prompt a row is trained and sampled with. ``system``: the row's own system message (default
    ``sample["system"]``). An agent row's prompt is its environment's intro (or the row's own system message) and
    tools (``agent.system_for``); any other row's is its own system message, else its domain's."""
    if system is None:
        system = sample.get("system")
    if sample["domain"] == "agent":
        return agent.system_for({**sample, "system": system} if system else sample)
    return system if system is not None else system_message(sample["domain"])


def system_and_tools(sample: dict, system: str | None = None) -> tuple[str | None, list[dict] | None]:
    """(system text, tool schemas) of a row: what the system message carries (``core.chat`` renders the tools after
    the text, as :func:`system_prompt` writes them). An agent row's tools are its environment's -- a conversation
    with tools, whose earlier turns keep their reasoning (V4's rule), also before its first tool call."""
    if sample["domain"] != "agent":
        return system_prompt(sample, system), None
    if system is None:
        system = sample.get("system")
    row = {**sample, "system": system} if system else sample
    env = agent.make_env(row)
    return (system or env.intro or None), env.tools()


def corpus(seed: int = 0, n_per_domain: int = 300) -> list[str]:
    """Text the embedded tokenizer is trained on: prompts and demonstrations of every domain and mode."""
    from core.chat import MODES, render_prompt

    texts = []
    for d in DOMAINS:
        for s in generate(d, "train", n_per_domain, seed):
            sys = system_message(d)
            for m in MODES:
                msgs = ([{"role": "system", "content": sys}] if sys else []) + [{"role": "user", "content": s["prompt"]}]
                texts.append(render_prompt(msgs + demonstration(s, m), m, add_generation_prompt=False))
    return texts


Generator = Callable[[random.Random], dict]


def load_tasks(domain: str, split: str, n: int, seed: int = 0, source: dict | None = None) -> list[dict]:
    """Tasks of ``domain`` from the recipe's source (a ``TaskSource`` dump): the built-in generator, or any
    `datasets`-loadable source read by :func:`rewards.tasks.rows.load_rows` -- TRL's formats (``messages``,
    ``prompt_completion``, ``prompt_only``), columns renamed by ``fields`` (our name -> column), each row validated
    with its domain's verifier spec; a bad row is a one-line ``ValueError`` naming the source, the row and the field
    (docs/data.md)."""
    source = source or {}
    fmt = source.get("format") or "auto"
    if source.get("source", "generated") == "generated":
        if fmt not in ("auto", "generated"):
            raise ValueError(f"tasks.{domain}.format: {fmt!r} reads a datasets source; the generated source has "
                             f"format generated (or auto)")
        return generate(domain, split, n, seed, source.get("params"))
    if fmt == "generated":
        raise ValueError(f"tasks.{domain}.format: generated needs source: generated, got {source['source']!r}")
    from .rows import load_rows

    return load_rows(domain, split, n, source)
