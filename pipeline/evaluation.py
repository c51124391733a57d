"""`pipeline eval`: evaluate a run directory's models, or one Hugging Face checkpoint, outside a run.

    pipeline eval runs/think_max                # every model of a run -> runs/think_max/eval/
    pipeline eval path/to/hf_folder --recipe recipes/think_max.yaml --out evals/mine

A run directory's stages are evaluated with the recipe's held-out spec, reusing each stage's own rows where they
are the same computation (train/eval_stage.py); a checkpoint is evaluated on every domain x mode.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.rundir import RunDirError, read_json
from train.config import EvalTarget, held_out
from train.eval_stage import evaluate_targets, write_results
from train.evaluate import HeldOutEvaluator

from .graph import build_graph
from .recipe import Recipe, RecipeError, load_recipe


def eval_command(target: str, recipe_path: str | None = None, out: str | None = None, workers: int | None = None,
                 overrides: list[str] = ()) -> Path:
    """Evaluate a run directory's models, or one Hugging Face checkpoint folder; returns the results folder."""
    path = Path(target)
    workers = workers or max(1, (os.cpu_count() or 2) // 2)
    if (path / "recipe.yaml").exists() and not (path / "config.json").exists():
        recipe = load_recipe(recipe_path or path / "recipe.yaml", overrides, check=False)
        wanted = set(recipe.eval.models) if recipe.eval is not None and recipe.eval.models is not None else None
        targets = [EvalTarget(id=s.id, cells=s.cells) for s in build_graph(recipe, check=False)
                   if s.cells and (wanted is None or s.id in wanted)
                   and (read_json(path / s.id / "manifest.json", {}) or {}).get("status") == "complete"
                   and (path / s.id / "final" / "config.json").exists()]
        if not targets:
            raise RunDirError(f"{path}: no complete model stage to evaluate")
        out_dir = Path(out) if out else path / "eval"
        rows = evaluate_targets(held_out(recipe, workers), path, targets, workers)
        write_results(out_dir, rows, f"Evaluation of {recipe.name}")
        return out_dir
    if (path / "config.json").exists():
        recipe = load_recipe(recipe_path, overrides, check=False) if recipe_path else Recipe(name="eval", sft=None)
        out_dir = Path(out) if out else Path("evals") / path.resolve().name
        cells = [(d, m) for d in recipe.domains for m in recipe.modes]
        rows = HeldOutEvaluator(held_out(recipe, workers), workers)(path.resolve().name, path, cells)
        write_results(out_dir, rows, f"Evaluation of {path}")
        return out_dir
    if not path.exists():
        raise RunDirError(f"{path}: no such run directory or checkpoint")
    raise RecipeError(f"{path}: neither a run directory (recipe.yaml) nor a Hugging Face folder (config.json)")
