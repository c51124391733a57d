"""`pipeline export RUN_DIR --stage STAGE --format hf|mxfp4 --out DIR`: a shareable model folder with a model card.

``hf``: the stage's ``final/`` (weights, config, tokenizer) with the three-mode chat template guaranteed in the
tokenizer; ``mxfp4``: the same model as a compressed-tensors MXFP4A16 checkpoint (``rollout/export.py``), which vLLM
loads. Either way ``README.md`` is a model card: the chain of stages that produced the model with their recipe
values and summaries, and its rows of ``eval/results.json`` when the run was evaluated.

Use the chat template with ``mode``::

    tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, mode="think_max")
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from core.chat import CHAT_TEMPLATE
from core.rundir import RunDirError, read_json, replace_dir


def _recipe(run_dir: Path):
    from .recipe import Recipe

    f = run_dir / "recipe.yaml"
    if not f.exists():
        return None
    try:
        return Recipe.model_validate(yaml.safe_load(f.read_text()))
    except Exception:  # noqa: BLE001 — an old or hand-edited recipe: the card just says less
        return None


def stage_chain(run_dir: Path, stage: str) -> list:
    """The stages that produced ``stage``'s model (its ancestors, in run order), as graph specs."""
    from .graph import ancestors, build_graph

    recipe = _recipe(run_dir)
    if recipe is None:
        return []
    graph = build_graph(recipe)
    if stage not in {s.id for s in graph}:
        return []
    keep = ancestors(graph, {stage})
    return [s for s in graph if s.id in keep]


def model_card(run_dir: Path, stage: str, fmt: str) -> str:
    run_dir = Path(run_dir)
    recipe = _recipe(run_dir)
    chain = stage_chain(run_dir, stage)
    name = recipe.name if recipe else run_dir.name
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [deepseek-v4-style, post-training, grpo, on-policy-distillation]", "---", "",
             f"# {name} / {stage}", "",
             f"Exported from run `{run_dir.resolve().name}`, stage `{stage}`, format `{fmt}` "
             f"({'Hugging Face safetensors' if fmt == 'hf' else 'compressed-tensors MXFP4A16, weight-only FP4'}).",
             ""]
    lines += ["## Usage", "", "The chat template renders DeepSeek-V4's three reasoning modes; pass `mode`:", "",
              "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(PATH)", "model = AutoModelForCausalLM.from_pretrained(PATH)",
              "msgs = [{'role': 'user', 'content': 'What is 17 * 23?'}]",
              "ids = tok.apply_chat_template(msgs, add_generation_prompt=True, mode='think_high',",
              "                              return_tensors='pt', return_dict=True)",
              "```", "",
              "- `non_think`: the assistant turn starts with `</think>` (no reasoning)",
              "- `think_high`: the assistant turn starts with `<think>`",
              "- `think_max`: `<think>` plus the \"Reasoning Effort: Absolute maximum ...\" system prefix", ""]
    lines += ["## How it was trained", ""]
    if chain:
        lines.append("Stage chain (run order): " + " → ".join(f"`{s.id}`" for s in chain))
        lines.append("")
        for s in chain:
            m = read_json(run_dir / s.id / "manifest.json", {}) or {}
            lines.append(f"### `{s.id}` ({s.kind})")
            lines.append("")
            deps = ", ".join(f"`{d}`" for d in s.deps) or "none"
            lines.append(f"- inputs: {deps}; status: {m.get('status', 'unknown')}; "
                         f"finished: {m.get('finished', '-')}; wall: {m.get('wall_s', '-')} s")
            summ = {k: round(v, 4) for k, v in (m.get("metrics") or {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if summ:
                lines.append("- summary: " + ", ".join(f"{k}={v}" for k, v in list(summ.items())[:24]))
            cfg = s.config.model_dump(mode="json") if hasattr(s.config, "model_dump") else {}
            if cfg:
                lines += ["", "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```"]
            lines.append("")
    else:
        lines += ["(no recipe.yaml in the run directory: the stage chain is unknown)", ""]
    if recipe is not None:
        base = {"seed": recipe.seed, "domains": recipe.domains, "modes": recipe.modes,
                "model": recipe.model.model_dump(mode="json"), "learner": recipe.learner.model_dump(mode="json")}
        lines += ["Recipe values shared by every stage:", "", "```yaml",
                  yaml.safe_dump(base, sort_keys=False).rstrip(), "```", ""]
    lines += ["## How it was evaluated", ""]
    rows = [r for r in (read_json(run_dir / "eval" / "results.json", []) or []) if r.get("model") == stage]
    if rows:
        from train.eval_stage import results_markdown

        lines += ["Held-out prompts of the recipe's task sources (`eval` stage; sampled at the recipe's sampling "
                  "with 95% intervals over prompts, `*_greedy` greedy; pass@k from sampled completions):", "",
                  results_markdown(rows)]
    else:
        lines += ["Not evaluated in this run (run the `eval` stage or `pipeline eval RUN_DIR`).", ""]
    return "\n".join(lines) + "\n"


def export_stage(run_dir: Path, stage: str, fmt: str, out: Path) -> Path:
    """Write ``out`` (replacing it) and return it."""
    from transformers import AutoTokenizer

    run_dir, out = Path(run_dir), Path(out)
    final = run_dir / stage / "final"
    if not (final / "config.json").exists():
        have = sorted(p.parent.parent.name for p in run_dir.glob("*/final/config.json"))
        raise RunDirError(f"{run_dir}: stage {stage!r} has no final model (stages with one: "
                          f"{', '.join(have) or 'none'})")
    if fmt not in ("hf", "mxfp4"):
        raise ValueError(f"unknown format {fmt!r} (hf or mxfp4)")
    tok = AutoTokenizer.from_pretrained(str(final))
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if fmt == "hf":
        shutil.copytree(final, tmp)
        tok.save_pretrained(str(tmp))
    else:
        from rollout.export import export_mxfp4_checkpoint

        export_mxfp4_checkpoint(str(final), tok, tmp)
    (tmp / "README.md").write_text(model_card(run_dir, stage, fmt))
    replace_dir(tmp, out)
    return out
