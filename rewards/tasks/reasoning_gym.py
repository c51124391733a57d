"""Math rows from reasoning-gym (``reasoning-gym`` on PyPI, Apache-2.0): procedural generators with verifiers, no hub.

``tasks.math: {source: reasoning_gym, reasoning_gym: {datasets: {<name>: {<generator config>}, ...}}}`` reads each
named generator (``reasoning_gym.create_dataset(name, size=, seed=, **config)``) and interleaves them, one entry of
each in turn, so the first ``n`` rows cover every generator. Each entry becomes a ``messages`` row:

* ``prompt``: the entry's question; ``answer``: its answer (the math verifier's gold, scored by math-verify);
* the demonstration: an assistant turn ending ``The answer is \\boxed{<answer>}.``; where the generator gives a worked
  solution (``gsm_symbolic``'s ``metadata["answer_cot"]``, GSM8K style, ending ``#### N``) it is the turn's reasoning
  (``reasoning_content``, the ``#### N`` line dropped), so under ``sft_modes: by_reasoning`` those rows train the
  think modes and the answer-only rows (``basic_arithmetic``, ``chain_sum``, ...) train non_think;
* ``rg_dataset``: the generator's name (kept for the report).

**Train / held-out split** by a hash of the question (one in ``HELD_OUT_EVERY``), so the two never overlap whatever
the sizes; duplicates within a split are dropped. The same seed gives the same rows on every machine.

reasoning-gym's own ``score_answer`` is not the reward: every math row is scored by this project's math verifier
(math-verify in a killable worker). tests/rewards/test_reasoning_gym.py cross-checks the two on the generators'
answers. Every row goes through ``rewards.tasks.rows.read_row`` like a row of any dataset.
"""
from __future__ import annotations

import hashlib
import re

INSTALL_HINT = "pip install reasoning-gym==0.1.25"
HELD_OUT_EVERY = 8
_COT_TAIL = re.compile(r"\n?####\s*[^\n]*\s*$")


class ReasoningGymMissing(ValueError):
    """reasoning-gym is not installed; ``str(err)`` is the one line to print."""


def _rg():
    try:
        import reasoning_gym
    except ImportError:
        raise ReasoningGymMissing(f"needs the reasoning-gym package, which is not installed ({INSTALL_HINT}; "
                                  f"`make setup` installs it)") from None
    return reasoning_gym


def split_of(question: str) -> str:
    h = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16)
    return "test" if h % HELD_OUT_EVERY == 0 else "train"


def check_datasets(datasets: dict) -> dict:
    """Each generator exists and accepts its config (one entry is built); a ValueError names the bad one."""
    if not datasets:
        raise ValueError("datasets: expected at least one reasoning-gym generator, e.g. {basic_arithmetic: {}}")
    rg = _rg()
    for name, cfg in datasets.items():
        try:
            rg.create_dataset(name, size=1, seed=0, **(cfg or {}))
        except Exception as e:  # noqa: BLE001 -- reasoning-gym raises ValueError/TypeError/AssertionError/KeyError
            msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise ValueError(f"datasets.{name}: {msg}") from None
    return datasets


def rg_row(entry: dict, name: str) -> dict:
    """One reasoning-gym entry as a ``messages`` row with the math verifier spec (``answer``)."""
    answer = str(entry["answer"]).strip()
    cot = (entry.get("metadata") or {}).get("answer_cot")
    assistant = {"role": "assistant", "content": f"The answer is \\boxed{{{answer}}}."}
    if cot:
        assistant["reasoning_content"] = _COT_TAIL.sub("", str(cot)).strip()
    return {"prompt": entry["question"], "answer": answer, "rg_dataset": name,
            "messages": [{"role": "user", "content": entry["question"]}, assistant]}


def entries(name: str, cfg: dict, split: str, n: int, seed: int) -> list[dict]:
    """The first ``n`` distinct entries of generator ``name`` in ``split`` (fewer if the generator has fewer)."""
    rg = _rg()
    out, seen, size = [], set(), max(16, n * HELD_OUT_EVERY * 2 if split == "test" else n * 2)
    for attempt in range(4):
        ds = rg.create_dataset(name, size=size, seed=seed + 1000003 * attempt, **(cfg or {}))
        for e in ds:
            q = e["question"]
            if q in seen or split_of(q) != split:
                continue
            seen.add(q)
            out.append(e)
            if len(out) >= n:
                return out
    return out


def load_reasoning_gym(domain: str, split: str, n: int, source: dict, seed: int = 0) -> list[dict]:
    """Samples of the recipe's generators (``source["reasoning_gym"]["datasets"]``) in ``split``, interleaved.
    A bad entry raises ``rows.RowError``: ``tasks.<domain>: reasoning_gym:<name> row <i>: <field>: <problem>``."""
    from .rows import Bad, RowError, read_row

    opts = source.get("reasoning_gym") or {"datasets": {"gsm_symbolic": {}}}
    policy = source.get("sft_modes") or "by_reasoning"
    if domain != "math":
        raise RowError(f"tasks.{domain}: source: reasoning_gym gives math rows, not {domain}")
    seed = int(opts.get("seed", seed))
    try:
        per = {name: entries(name, cfg, split, n, seed) for name, cfg in check_datasets(opts.get("datasets")).items()}
    except ValueError as e:
        raise RowError(f"tasks.{domain}: reasoning_gym: {e}") from None
    order, k = [], 0
    while len(order) < n and any(k < len(v) for v in per.values()):
        order += [(name, k, per[name][k]) for name in per if k < len(per[name])]
        k += 1
    out = []
    for name, i, entry in order[:n]:
        label = f"reasoning_gym:{name}"
        try:
            row = rg_row(entry, name)
            s = {**row, **read_row(row, "math", "messages")}
        except (Bad, KeyError) as e:
            field, problem = (e.field, e.problem) if isinstance(e, Bad) else (str(e), "missing")
            raise RowError(f"tasks.{domain}: {label} row {i}: {field}: {problem}") from None
        s.pop("messages", None)
        s["id"] = f"math/{split}/{len(out)}"
        s["domain"] = "math"
        s["origin"] = {"source": label, "row": i, "format": s.pop("format"), "sft_modes": policy}
        out.append(s)
    return out
