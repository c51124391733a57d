"""The world size a learner checkpoint was written at, and whether this learner may resume it.

``Learner.save`` records ``world.json`` (``{"world": ranks, "zero_stage": ZeRO stage, 0 without DeepSpeed}``);
``Learner.load`` calls :func:`check_world` first. The rule:

* a plain (DDP or single-rank) checkpoint holds the full, replicated weights and optimizer, and a step's global batch
  does not depend on the number of ranks: it resumes at ANY world size (``resources.num_gpus`` or the placement
  may change between the interruption and the resume);
* a DeepSpeed ZeRO checkpoint holds per-rank partitions (the optimizer's, and at stage 3 the weights'), which are
  not resharded here: resuming it at another world size, or across DeepSpeed and plain, is refused with one line
  that says what to do (resume with the checkpoint's ranks, or re-run the stage from scratch with ``--force``).

A checkpoint written before ``world.json`` existed is read from its files: the DeepSpeed shards
(``zero_pp_rank_<r>_..._optim_states.pt``, one per rank) give its world size.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

FILE = "world.json"


def write_world(folder: Path, world: int, zero_stage: int) -> None:
    (Path(folder) / FILE).write_text(json.dumps({"world": int(world), "zero_stage": int(zero_stage)}))


def saved_world(folder: Path) -> dict:
    """``{"world": N or None, "zero_stage": z or None}`` of a saved checkpoint (None: not recorded, not inferable)."""
    folder = Path(folder)
    if (folder / FILE).exists():
        return json.loads((folder / FILE).read_text())
    if (folder / "accelerate").is_dir():          # DeepSpeed (through accelerate): one optimizer shard per rank
        ranks = {m.group(1) for p in (folder / "accelerate").rglob("*optim_states.pt")
                 for m in [re.search(r"zero_pp_rank_(\d+)_", p.name)] if m}
        return {"world": len(ranks) or None, "zero_stage": None}
    return {"world": None, "zero_stage": 0}


def check_world(folder: Path, world: int, zero_stage: int) -> None:
    """Raise a one-line ``ValueError`` when this learner (``world`` ranks, ZeRO ``zero_stage``, 0 = plain) cannot
    resume ``folder`` exactly (see the module docstring)."""
    saved = saved_world(folder)
    s_world, s_zero = saved.get("world"), saved.get("zero_stage")
    s_ds = s_zero is None or s_zero > 0            # None: DeepSpeed shards of an unrecorded stage
    if not s_ds and zero_stage == 0:
        return                                      # replicated weights and optimizer: any world size
    name = f"checkpoint {folder}"
    was = f"ZeRO-{s_zero}" if s_zero else ("ZeRO" if s_ds else "plain (no ZeRO)")
    now = f"ZeRO-{zero_stage}" if zero_stage else "plain (no ZeRO)"
    fresh = "or re-run the stage from scratch (pipeline run RECIPE --force STAGE)"
    if s_ds != (zero_stage > 0):
        raise ValueError(f"{name} was written by a {was} learner, this learner is {now}: it cannot resume it; "
                         f"set learner.zero_stage back, {fresh}")
    if s_world is not None and s_world != world:
        raise ValueError(f"{name} was written by {s_world} ZeRO ranks, this learner has {world}: ZeRO's per-rank "
                         f"partitions are not resharded; resume with learner.ranks={s_world} (and the GPUs for "
                         f"them), {fresh}")
