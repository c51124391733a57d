"""Preflight of task rows (``pipeline.preflight``): every source and split the selected stages will read, checked
with the checks the stages apply, before anything runs.

What a stage reads (:func:`reads`): ``task`` / ``tasks`` in its config, the ``train`` split, ``n_train`` rows; its
held-out evaluation (``heldout``), the ``test`` split of the domains it is scored on, ``n_eval`` rows. A GRPO
stage samples ``prompts_per_step`` distinct prompts per step: a split with fewer rows is an error, and so is an empty
one. Stages that train SFT on the rows (``SFT_KINDS``) also turn each row into its SFT conversation
(``train.datasets.conversation``; imported only then: it imports TRL, hence torch).

How rows are read: one local JSON Lines file (``source: json``) is streamed line by line here and every row goes
through ``rewards.tasks.rows.read_row`` (the loader's own checks); any other source goes through the loader itself
(``rewards.tasks.load_tasks``: packaged sources such as BFCL or reasoning-gym, other loaders, local folders); the
generator and hub datasets are not read (the generator's parameters are checked
by the schema; a hub dataset needs the network). Errors are docs/data.md's one line: ``tasks.<domain>: <source>
row <i>: <field>: <problem>``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# the stage kinds whose run trains SFT on the demonstrations of the rows they read
SFT_KINDS = ("sft", "base", "generalist")
# `datasets`' packaged loaders (a `source` naming one reads `data_files`); anything else is a folder or a hub name
LOADERS = ("json", "csv", "parquet", "arrow", "text", "pandas", "webdataset", "xml")
_SLICE = re.compile(r"^\s*train\s*(\[[^\]]*\])?\s*$")


@dataclass
class Read:
    """One (domain, source, split) and what the selected stages ask of it."""
    domain: str
    source: dict                        # the TaskSource dump, n_train / n_eval left out
    split: str                          # train | test
    n: int = 0                          # the most rows a stage reads
    distinct: int = 0                   # the most distinct rows a stage samples at once (GRPO's prompts_per_step)
    distinct_by: str = ""
    sft_modes: set = field(default_factory=set)   # modes an SFT stage trains on these rows
    stages: list = field(default_factory=list)

    @property
    def split_key(self) -> str:
        return "train_split" if self.split == "train" else "eval_split"

    @property
    def split_spec(self) -> str:
        return self.source.get(self.split_key) or ("train" if self.split == "train" else "test")


def reads(graph) -> list[Read]:
    """Every (domain, source, split) the stages of ``graph`` read, merged."""
    out: dict[tuple, Read] = {}

    def add(domain, src, split, n, spec, distinct=0, sft_modes=()):
        dump = src.model_dump(mode="json", exclude={"n_train", "n_eval"})
        r = out.setdefault((domain, json.dumps(dump, sort_keys=True), split), Read(domain, dump, split))
        r.n = max(r.n, n)
        if distinct > r.distinct:
            r.distinct, r.distinct_by = distinct, spec.id
        r.sft_modes |= set(sft_modes)
        r.stages.append(spec.id)

    for spec in graph:
        cfg = spec.config
        sft_modes = getattr(cfg, "modes", ()) if spec.kind in SFT_KINDS else ()
        distinct = getattr(getattr(cfg, "grpo", None), "prompts_per_step", 0)
        task = getattr(cfg, "task", None)
        if task is not None and spec.domain:
            add(spec.domain, task, "train", task.n_train, spec, distinct, sft_modes)
        for d, src in (getattr(cfg, "tasks", None) or {}).items():
            add(d, src, "train", src.n_train, spec, 0, sft_modes)
        heldout = getattr(cfg, "heldout", None)
        if heldout is not None:
            for d in sorted({d for d, _ in spec.cells} | set(spec.scores)):
                if d in heldout.tasks:
                    add(d, heldout.tasks[d], "test", heldout.tasks[d].n_eval, spec)
    return list(out.values())


def kind_of(read: Read) -> str:
    """How ``read`` is checked: ``generated``, ``stream`` (one local JSON Lines file), ``loader`` (the project's
    loader: a datasets loader with local files, a local folder, a packaged source) or ``skip`` (a hub dataset, an
    unknown kind)."""
    from rewards.tasks.rows import source_names

    names, files = source_names(read.source), read.source.get("data_files")
    if names == ["generated"]:
        return "generated"
    if all(s in _packaged() for s in names):     # one packaged source, or a list of them
        return "loader"
    if len(names) > 1:
        return "skip"
    s = names[0]
    local = bool(files) and "://" not in str(files) and not any(ch in str(files) for ch in "*?[")
    if s == "json" and local and _SLICE.match(read.split_spec) and _json_lines(Path(files).expanduser()):
        return "stream"
    if (s in LOADERS and files) or Path(s).expanduser().exists():
        return "loader"
    return "skip"


def _packaged() -> set:
    """Sources read from installed packages by the project's loader (``train.suites.PACKAGED_SOURCES``)."""
    try:
        from train.suites import PACKAGED_SOURCES
    except ImportError:
        return {"bfcl"}
    return set(PACKAGED_SOURCES)


def _json_lines(path: Path) -> bool:
    """A JSON Lines file (``.jsonl``, or a ``.json`` whose first line is a whole object), not a JSON document."""
    if not path.is_file():
        return False
    if path.suffix == ".jsonl":
        return True
    if path.suffix != ".json":
        return False
    with open(path, "rb") as f:
        first = f.readline()
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def _where(read: Read) -> str:
    from rewards.tasks.rows import source_label

    return f"tasks.{read.domain}: {source_label(read.source)}"


def _count(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _columns_of(path: Path, start: int) -> list[str]:
    """Every key of the file's objects (first-seen order), for the ``fields`` error, from line ``start`` on."""
    cols: dict[str, None] = {}
    with open(path, "rb") as f:
        for i, line in enumerate(x for x in f if x.strip()):
            if i >= start:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    cols.update(dict.fromkeys(obj))
    return list(cols)


class _SFT:
    """The SFT conversion of each row (``train.datasets``), as the SFT stages apply it."""

    def __init__(self, modes: set):
        from train.datasets import conversation, sft_conversations

        self.conversation, self.all, self.modes = conversation, sft_conversations, sorted(modes)
        self.trains, self.first = False, None

    def row(self, sample: dict) -> None:
        conv = self.conversation(sample)
        self.first = self.first or sample
        if not self.trains:
            self.trains = bool(conv.modes(self.modes, sample["origin"]["sft_modes"]))

    def done(self) -> None:
        if self.first is not None and not self.trains:
            self.all([self.first], self.modes)       # raises its one line: no row trains the modes


def _sample(row: dict, parsed: dict, read: Read, label: str, i: int) -> dict:
    """A row as ``rewards.tasks.rows.load_rows`` returns it (what the SFT conversion reads)."""
    s = {**row, **parsed}
    s.pop("messages", None)
    s.pop("completion", None)
    s["domain"] = read.domain
    s["origin"] = {"source": label, "row": i, "format": s.pop("format"),
                   "sft_modes": read.source.get("sft_modes") or "by_reasoning"}
    return s


def _scan(job: tuple) -> dict:
    """Check the lines of ``path`` between byte offsets ``lo`` and ``hi`` (line ``idx0`` is the first), those whose
    row index is in ``[start, limit)``: their count, columns, SFT findings, or the first error."""
    from rewards.tasks.rows import Bad, RowError, read_row, source_label

    path, lo, hi, idx0, start, limit, read = job
    where, label = _where(read), source_label(read.source)
    fields, fmt = dict(read.source.get("fields") or {}), read.source.get("format") or "auto"
    sft = _SFT(read.sft_modes) if read.sft_modes else None
    out = {"count": 0, "lines": 0, "cols": {}, "error": None, "trains": False, "first": None}
    cols = out["cols"]
    i = idx0 - 1
    with open(path, "rb") as f:
        f.seek(lo)
        pos = lo
        for line in f:
            if pos >= hi:
                break
            pos += len(line)
            if not line.strip():
                continue
            i += 1
            out["lines"] += 1
            if i >= limit:
                break
            if i < start:
                continue
            try:
                row = json.loads(line.rstrip(b"\r\n"))
            except ValueError as e:
                msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
                out["error"] = (i, None, f"{where} row {i}: invalid JSON: {msg} (column {getattr(e, 'colno', '?')})")
                return out
            if not isinstance(row, dict):
                out["error"] = (i, None, f"{where} row {i}: expected a JSON object, got {type(row).__name__}")
                return out
            cols.update(dict.fromkeys(row))
            for ours, theirs in fields.items():
                row[ours] = row.get(theirs)
            try:
                parsed = read_row(row, read.domain, fmt)
                if sft is not None:
                    sft.row(_sample(row, parsed, read, label, i))
            except Bad as e:
                out["error"] = (i, "fields", f"{where} row {i}: {e.field}: {e.problem}")
                return out
            except RowError as e:
                out["error"] = (i, "fields", str(e))
                return out
            out["count"] += 1
    if sft is not None:
        out["trains"], out["first"] = sft.trains, sft.first
    return out


def _chunks(path: Path, parts: int) -> list[tuple[int, int, int]]:
    """``parts`` byte ranges of ``path`` cut at line ends, each with the index of its first non-blank line."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            f.seek(max(cuts[-1], size * k // parts))
            f.readline()
            cuts.append(f.tell())
        cuts.append(size)
        out, idx = [], 0
        for lo, hi in zip(cuts, cuts[1:]):
            if hi <= lo:
                continue
            f.seek(lo)
            out.append((lo, hi, idx))
            idx += sum(1 for line in f.read(hi - lo).split(b"\n") if line.strip())
    return out


def stream(read: Read, workers: int | None = None) -> int:
    """Check the rows of a local JSON Lines file line by line (in ``workers`` processes when it is large); returns
    the number of rows in the split read."""
    from rewards.tasks.rows import RowError

    where, path = _where(read), Path(read.source["data_files"]).expanduser()
    spec, fields = read.split_spec, dict(read.source.get("fields") or {})
    start, stop = 0, None
    if "[" in spec:                                   # datasets' slice semantics (percent rounding included)
        import datasets

        try:
            r = datasets.ReadInstruction.from_spec(spec).to_absolute({"train": _count(path)})[0]
        except Exception as e:  # noqa: BLE001 — as the loader reports a bad split
            raise RowError(f"{where}: cannot load split {spec!r}: {type(e).__name__}: {str(e)[:200]}") from None
        start, stop = r.from_, r.to
    limit = start + read.n if stop is None else min(stop, start + read.n)
    size = path.stat().st_size
    workers = workers or (min(8, os.cpu_count() or 1) if size > 32 << 20 else 1)
    jobs = [(path, lo, hi, idx0, start, limit, read) for lo, hi, idx0 in
            (_chunks(path, workers) if workers > 1 else [(0, size, 0)])]
    if len(jobs) > 1:
        import multiprocessing

        if read.sft_modes:
            import train.datasets  # noqa: F401  (imported once, before the workers fork)

        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            results = pool.map(_scan, jobs)
    else:
        results = [_scan(j) for j in jobs]
    cols: dict = {}
    for r in results:
        cols.update(r["cols"])

    def missing_columns() -> None:
        """A mapped column no row has: the loader's error (it knows every column before reading a row)."""
        for ours, theirs in fields.items():
            if theirs not in cols:
                cols.update(dict.fromkeys(_columns_of(path, 0)))
                if theirs not in cols:
                    raise RowError(f"{where}: fields.{ours}: no column {theirs!r} (columns: {', '.join(cols)})")

    errors = sorted(r["error"] for r in results if r["error"])
    if errors:
        if errors[0][1] == "fields":
            missing_columns()
        raise RowError(errors[0][2])
    count, lines = sum(r["count"] for r in results), sum(r["lines"] for r in results)
    if count == 0:
        if lines == 0:
            raise RowError(f"{where}: no rows (the file is empty)")
        raise RowError(f"{where}: {read.split_key} {spec!r} selects no rows (the file has {lines})")
    missing_columns()
    if read.sft_modes and not any(r["trains"] for r in results):
        first = next(r["first"] for r in results if r["first"] is not None)
        from train.datasets import sft_conversations

        sft_conversations([first], sorted(read.sft_modes))     # raises its one line: no row trains the modes
    return count


def via_loader(read: Read, seed: int) -> int:
    """Check a source through the project's loader (``rewards.tasks.load_tasks``); returns the rows read."""
    from rewards.tasks import load_tasks
    from rewards.tasks.rows import RowError

    rows = load_tasks(read.domain, read.split, read.n, seed, {**read.source, "n_train": read.n, "n_eval": read.n})
    if not rows:
        raise RowError(f"{_where(read)}: {read.split_key} {read.split_spec!r}: no rows")
    if read.sft_modes:
        sft = _SFT(read.sft_modes)
        for s in rows:
            sft.row(s)
        sft.done()
    return len(rows)


def check_read(read: Read, seed: int) -> int:
    """Rows checked; raises ValueError (one line) on the first bad row, an empty split, or too few rows."""
    n = stream(read) if kind_of(read) == "stream" else via_loader(read, seed)
    if n < read.distinct:
        raise ValueError(f"{_where(read)}: {read.split_key} {read.split_spec!r} has {n} rows but stage "
                         f"{read.distinct_by} samples {read.distinct} distinct prompts per step "
                         f"(grpo.prompts_per_step)")
    return n
