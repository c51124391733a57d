"""BFCL v4 from the installed ``bfcl-eval`` package: its single-turn categories as agent task rows, no hub.

The package ships each category as JSON lines: ``data/BFCL_v4_<category>.json`` (``id``, ``question``: a list of
turns, each a list of ``{role, content}`` messages; ``function``: the function docs) and
``data/possible_answer/BFCL_v4_<category>.json`` (``id``, ``ground_truth``: ``[{name: {param: [allowed values]}}]``;
the irrelevance categories have none: no call is right). ``read_category`` joins the two by id; ``bfcl_row`` turns
one entry into a row of this project:

* ``prompt``: the user turn(s) (joined by a blank line), ``system``: the entry's system message if it has one;
* ``functions``: the function docs (what ``rewards.envs.BfclEnv`` shows as the episode's tools), ``ground_truth``:
  the possible answers (the verifier spec), ``category``, ``checker: ast`` (BFCL's official AST checker,
  ``rewards.envs.bfcl``), ``env: bfcl``;
* ``messages``: the user turn(s) and one assistant turn making the expected calls (each parameter's first allowed
  value; an optional one left out), so SFT can train on the rows like on any ``messages`` row.

Each row then goes through ``rewards.tasks.rows.read_row`` like a row of any dataset, so its checks and its sample
fields are those of every agent row of environment ``bfcl``.

**Train / held-out split**: by a hash of the entry's id (``split_of``: one id in ``HELD_OUT_EVERY`` is held out),
so the two never overlap whatever the sizes or categories; RL trains on ``train``, the held-out evaluation and the
``bfcl`` evaluation suite read ``test``. Within a split the categories are interleaved (one row of each in turn), so
the first ``n`` rows cover every category.

Recipe: ``tasks.agent: {source: bfcl, bfcl: {categories: [...], max_chars: 1200}}`` (docs/data.md).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..envs.bfcl import BfclMissing, package_dir

# BFCL's single-turn Python categories; the AST checker scores all but the irrelevance ones (no call is right)
CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple", "live_multiple",
              "live_parallel", "live_parallel_multiple", "irrelevance", "live_irrelevance")
DEFAULT_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple")
HELD_OUT_EVERY = 4          # one id in 4 is held out
NO_CALL_ANSWER = "None of the available functions applies."


class BfclError(ValueError):
    """A bad BFCL file or entry; ``str(err)`` is the one line to print."""


def split_of(row_id: str) -> str:
    """``test`` (held out) or ``train``, from a hash of the entry's id."""
    h = int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16)
    return "test" if h % HELD_OUT_EVERY == 0 else "train"


def check_categories(categories) -> list[str]:
    """The categories as a list; an unknown one is a ValueError naming it and the known ones."""
    out = list(categories)
    for c in out:
        if c not in CATEGORIES:
            raise ValueError(f"unknown BFCL category {c!r} (known: {', '.join(CATEGORIES)})")
    if len(set(out)) != len(out) or not out:
        raise ValueError("expected a non-empty list of categories without repeats")
    return out


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise BfclError(f"bfcl: {path}: no such file (bfcl-eval installed but not the files this project reads?)")
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise BfclError(f"bfcl: {path} line {i + 1}: not JSON ({e})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                raise BfclError(f"bfcl: {path} line {i + 1}: id: missing (each line is an object with an id)")
            out.append((i, obj))
    return out


def category_files(category: str) -> tuple[Path, Path | None]:
    """(question file, possible-answer file or None for the irrelevance categories) of ``category``."""
    root = package_dir() / "data"
    q = root / f"BFCL_v4_{category}.json"
    a = root / "possible_answer" / f"BFCL_v4_{category}.json"
    return q, (None if "irrelevance" in category else a)


def read_category(category: str) -> list[tuple[int, dict]]:
    """``(line, entry)`` of every entry of ``category`` with its ``ground_truth`` joined in (``[]`` for irrelevance)."""
    qf, af = category_files(category)
    entries = _read_jsonl(qf)
    if af is None:
        return [(i, {**e, "ground_truth": []}) for i, e in entries]
    truth = {a["id"]: (i, a) for i, a in _read_jsonl(af)}
    out = []
    for i, e in entries:
        if e["id"] not in truth:
            raise BfclError(f"bfcl: {af}: no ground truth for {e['id']!r} (question line {i + 1})")
        out.append((i, {**e, "ground_truth": truth[e["id"]][1].get("ground_truth")}))
    return out


def _demo_calls(truth: list, functions) -> list[dict]:
    """The expected calls with each parameter's first allowed value (an optional one, ``""`` first, left out, and so
    is one the function docs lack)."""
    docs = {f.get("name"): f.get("parameters") or {} for f in functions if isinstance(f, dict)} \
        if isinstance(functions, list) else {}
    calls = []
    for t in truth:
        if isinstance(t, dict) and set(t) == {"name", "arguments"}:
            calls.append({"name": t["name"], "arguments": dict(t["arguments"])})
            continue
        ((name, params),) = t.items()
        doc = docs.get(name) or {}
        known, required = doc.get("properties") or params, doc.get("required") or []
        args = {k: _first(v, k in required) for k, v in params.items() if k in known}
        calls.append({"name": name, "arguments": {k: v for k, v in args.items() if v is not _OMIT}})
    return calls


_OMIT = object()


def _first(allowed, required: bool = False):
    """A parameter's first allowed value, ``_OMIT`` when that is ``""`` (optional; a required parameter takes the
    next one); a dict value (BFCL writes a dict parameter's answer as ``{key: [allowed]}``, a list of dicts as a list
    of those) resolved key by key."""
    if not isinstance(allowed, list):
        return _OMIT
    values = [a for a in allowed if a != ""] if required else allowed
    if not values or values[0] == "":
        return _OMIT
    return _resolve(values[0])


def _resolve(v):
    if isinstance(v, dict):
        return {k: r for k, r in ((k, _first(x) if isinstance(x, list) else x) for k, x in v.items()) if r is not _OMIT}
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
        return [_resolve(x) for x in v]
    return v


def bfcl_row(entry: dict, category: str) -> dict:
    """One package entry (with ``ground_truth`` joined) as a ``messages`` row of environment ``bfcl``; the checks
    are ``rows.read_row``'s (raises ``rows.Bad`` naming the field)."""
    from .rows import Bad

    q = entry.get("question")
    if not isinstance(q, list) or not q:
        raise Bad("question", "expected a list of turns (each a list of messages)")
    msgs = []
    for j, turn in enumerate(q):
        turn = turn if isinstance(turn, list) else [turn]
        for k, m in enumerate(turn):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user"):
                raise Bad(f"question[{j}][{k}]", "expected a system or user message")
            msgs.append({"role": m["role"], "content": m.get("content")})
    truth = entry.get("ground_truth")
    if not isinstance(truth, list):
        raise Bad("ground_truth", f"expected a list of possible answers, got {type(truth).__name__}")
    try:
        calls = _demo_calls(truth, entry.get("function"))
    except (ValueError, AttributeError, TypeError):
        raise Bad("ground_truth", "expected [{function: {param: [allowed values]}}]") from None
    if calls:
        msgs.append({"role": "assistant", "content": None,
                     "tool_calls": [{"type": "function", "function": c} for c in calls]})
    else:
        msgs.append({"role": "assistant", "content": NO_CALL_ANSWER})
    return {"id": entry["id"], "messages": msgs, "env": "bfcl", "functions": entry.get("function"),
            "ground_truth": truth, "category": category, "checker": "ast"}


def prompt_chars(entry: dict) -> int:
    """The size of what the prompt shows: the question text and the function docs (JSON)."""
    text = "".join(str(m.get("content") or "") for t in entry.get("question") or [] for m in
                   (t if isinstance(t, list) else [t]) if isinstance(m, dict))
    return len(text) + len(json.dumps(entry.get("function"), ensure_ascii=False))


def entries(category: str, split: str, max_chars: int | None = None) -> list[tuple[int, dict]]:
    """``(line, entry)`` of ``category`` in ``split`` (``train`` / ``test``), in file order, at most ``max_chars``
    of question and function docs each (a small model's context)."""
    return [(i, e) for i, e in read_category(category)
            if split_of(e["id"]) == split and (max_chars is None or prompt_chars(e) <= max_chars)]


def load_bfcl(domain: str, split: str, n: int, source: dict, per_category: int | None = None) -> list[dict]:
    """Samples of the package's categories (``source["bfcl"]``: ``categories``, ``max_chars``) in ``split``:
    the first ``n`` rows with the categories interleaved, or (``per_category``) the first that many of each. A bad
    entry raises ``rows.RowError``: ``tasks.<domain>: bfcl:<category> row <line>: <field>: <problem>``."""
    from .rows import Bad, RowError, read_row

    opts = source.get("bfcl") or {}
    policy = source.get("sft_modes") or "by_reasoning"
    if domain != "agent":
        raise RowError(f"tasks.{domain}: source: bfcl gives function-calling rows of the agent domain")
    try:
        cats = check_categories(opts.get("categories") or DEFAULT_CATEGORIES)
        per = {c: entries(c, "test" if split == "test" else "train", opts.get("max_chars")) for c in cats}
    except (BfclMissing, BfclError, ValueError) as e:
        raise RowError(f"tasks.{domain}: bfcl: {e}") from None
    if per_category is not None:
        order = [(c, x) for c in cats for x in per[c][:per_category]]
    else:
        order, k = [], 0
        while len(order) < n and any(k < len(v) for v in per.values()):
            order += [(c, per[c][k]) for c in cats if k < len(per[c])]
            k += 1
        order = order[:n]
    out = []
    for c, (line, entry) in order:
        label = f"bfcl:{c}"
        try:
            row = bfcl_row(entry, c)
            s = {**row, **read_row(row, "agent", "messages")}
        except Bad as e:
            raise RowError(f"tasks.{domain}: {label} row {line}: {e.field}: {e.problem}") from None
        s.pop("messages", None)
        s["domain"] = "agent"
        s["origin"] = {"source": label, "row": line, "format": s.pop("format"), "sft_modes": policy}
        out.append(s)
    return out


def suite_rows(categories, limit: int | None = None, max_chars: int | None = None) -> dict[str, list[dict]]:
    """The ``bfcl`` evaluation suite: per category, the first ``limit`` held-out rows (all without a limit)."""
    cats = check_categories(categories)
    big = 10 ** 9 if limit is None else limit
    rows = load_bfcl("agent", "test", big * len(cats), {"bfcl": {"categories": cats, "max_chars": max_chars}},
                     per_category=big)
    return {c: [r for r in rows if r["category"] == c] for c in cats}
