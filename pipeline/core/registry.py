"""Named registries: stage kinds (the runner looks stages up here; the core never imports a stage)."""
from __future__ import annotations

from typing import Callable

STAGE_KINDS: dict[str, Callable] = {}


def register_stage(kind: str):
    """Register ``fn(ctx: StageContext) -> dict`` (the stage's metric summary) as stage kind ``kind``."""
    def deco(fn):
        if kind in STAGE_KINDS and STAGE_KINDS[kind] is not fn:
            raise ValueError(f"stage kind {kind!r} registered twice")
        STAGE_KINDS[kind] = fn
        return fn
    return deco
