"""Stage ``base``: the shared base -- SFT on the union of every domain's demonstrations, all modes, from
``base.init_from`` (``bootstrap``).

The SFT specialists and the generalist (the student's start) fine-tune it (``sft.init_from: base``,
``generalist.init_from: base``), as DeepSeek-V4's specialists and student start from one base model. On the
embedded tiny model it stands in for pretraining: a base that already knows the chat format and the domains, so that
a specialist's own SFT budget goes into its domain rather than into learning the format (docs/results.md, "A shared
base stage"). With a real model (``model.path``) the adopted model is the base and the recipe has no base stage.

    pipeline run recipes/think_max.yaml --only base
"""
from __future__ import annotations

from .sft import run_union_sft


def run(ctx) -> dict:
    return run_union_sft(ctx, "base")
