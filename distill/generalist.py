"""Stage ``generalist``: the student's start -- SFT on the union of every domain's demonstrations, all modes.

Each domain's demonstrations enter the union ``repeats[domain]`` times (by default in the proportions of the
distillation mixture); batch size, length and learner default to the ``sft`` section's, the number of steps to the
SFT specialists' steps together (the same SFT budget). Its ``final/`` is what ``distill`` starts from
(``distill.student_from``), and its held-out rows are the student's start in every results table.

    pipeline run recipes/think_max.yaml --only generalist
"""
from __future__ import annotations

from train.sft import run_union_sft


def run(ctx) -> dict:
    return run_union_sft(ctx, "generalist")
