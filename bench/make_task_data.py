"""Build the small task files shipped in ``rewards/data/`` from the project's own generators (deterministic).

    .venv/bin/python bench/make_task_data.py            # rewrite rewards/data/*.jsonl
    .venv/bin/python bench/make_task_data.py --check    # exit 1 if the shipped files differ from a fresh build

* ``sft_<domain>.jsonl`` -- demonstrations in TRL's formats, mixed row by row: ``messages`` with
  ``reasoning_content``, ``messages`` with a ``<think>`` block, ``messages`` without reasoning, and conversational
  ``prompt``/``completion`` with and without reasoning; agent rows call tools in OpenAI's ``tool_calls`` form
  (arguments as an object or a JSON string) with ``tool`` result messages, the expected calls read from the
  conversation or given as a ``tool_calls`` column. Every row carries its domain's verifier spec, so the file also
  serves GRPO and the held-out evaluation.
* ``rl_math.jsonl`` -- prompt-only math rows (``prompt``, ``answer``).
* ``rl_code.jsonl`` -- HumanEval-style rows (``task_id``, ``prompt``, ``canonical_solution``, ``test``,
  ``entry_point``): prompt-only as they are, prompt-completion (plain strings) with
  ``fields: {completion: canonical_solution}``.

In every file the first ``HELD_OUT`` rows come from the generators' held-out split and the rest from their training
split, so a recipe takes ``eval_split: train[:32]`` and ``train_split: train[32:]`` (docs/data.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from core.chat import END_THINK  # noqa: E402
from rewards.envs import parse_tool_calls  # noqa: E402
from rewards.tasks import demonstration, generate  # noqa: E402

HELD_OUT = 32
SFT_SIZES = {"math": 128, "code": 64, "agent": 64, "instruct": 64}   # training rows per domain, after HELD_OUT
RL_SIZES = {"math": 160, "code": 96}
OUT = Path(__file__).resolve().parents[1] / "rewards" / "data"
# one type per column and file: `datasets` stores a column that mixes strings and lists as JSON text, and reads back
# a string that is itself valid JSON ("42", a JSON response) as the decoded value
STYLES = ("reasoning_content", "think_block", "no_reasoning", "prompt_completion", "prompt_completion_plain")


def _tasks(domain: str, n_train: int, seed: int = 0) -> list[dict]:
    return generate(domain, "test", HELD_OUT, seed) + generate(domain, "train", n_train, seed)


def _assistant(content: str, style: str, i: int) -> dict:
    """A demonstration turn ("reasoning</think>answer" or the answer) as a TRL assistant message; a turn that calls
    tools carries them as OpenAI ``tool_calls`` (read back from the demonstration with the project's parser)."""
    reasoning, answer = content.split(END_THINK, 1) if END_THINK in content else ("", content)
    calls = parse_tool_calls(answer)
    msg: dict = {"role": "assistant", "content": answer}
    if calls:
        # OpenAI form; arguments alternate between a JSON string (OpenAI's wire form) and an object (TRL's)
        msg = {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": c.name,
                                              "arguments": json.dumps(c.arguments) if i % 2 else c.arguments}}
            for c in calls]}
    if reasoning:
        if style == "think_block":
            msg["content"] = f"<think>\n{reasoning}\n</think>\n\n{msg['content']}"
        else:
            msg["reasoning_content"] = reasoning
    return msg


def _spec(s: dict, i: int) -> dict:
    d = s["domain"]
    if d == "math":
        return {"answer": s["answer"]}
    if d == "code":
        return {"test": s["test"], "entry_point": s["entry_point"]}
    if d == "instruct":
        return {"instruction_id_list": s["instruction_id_list"], "kwargs": s["kwargs"]}
    spec = {"initial_state": s["initial_state"], "answer": s["answer"]}
    if i % 2:   # the expected calls as their own column; otherwise read from the conversation's tool_calls
        spec["tool_calls"] = json.loads(s["reference_actions"])
    return spec


def sft_row(s: dict, i: int) -> dict:
    style = STYLES[i % len(STYLES)]
    mode = {"reasoning_content": "think_max", "think_block": "think_high", "prompt_completion": "think_high"}.get(
        style, "non_think")           # prompt_completion_plain: conversational, without reasoning
    msgs = [m if m["role"] != "assistant" else _assistant(m["content"], style, i) for m in demonstration(s, mode)]
    # no system message: a row without one gets the domain's (rewards.tasks.system_message) when it is read
    row: dict = {"id": f"{s['domain']}/{i}"}
    if style.startswith("prompt_completion"):
        first = next(k for k, m in enumerate(msgs) if m["role"] == "assistant")
        row.update(prompt=msgs[:first], completion=msgs[first:])
    else:
        row["messages"] = msgs
    return {**row, **_spec(s, i)}


def rl_row(s: dict, i: int) -> dict:
    if s["domain"] == "math":
        return {"id": f"math/{i}", "prompt": s["prompt"], "answer": s["answer"]}
    return {"task_id": f"Gen/{i}", "prompt": s["prompt"], "canonical_solution": s["canonical_solution"],
            "test": s["test"], "entry_point": s["entry_point"]}


def files() -> dict[str, list[dict]]:
    out = {f"sft_{d}.jsonl": [sft_row(s, i) for i, s in enumerate(_tasks(d, n))] for d, n in SFT_SIZES.items()}
    out.update({f"rl_{d}.jsonl": [rl_row(s, i) for i, s in enumerate(_tasks(d, n, seed=1))]
                for d, n in RL_SIZES.items()})
    return out


def build(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in files().items():
        p = out_dir / name
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        written.append(p)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare a fresh build with rewards/data, write nothing")
    a = ap.parse_args()
    if not a.check:
        for p in build(OUT):
            print(p, sum(1 for _ in p.open()), "rows")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [p.name for p in build(Path(tmp)) if not (OUT / p.name).exists()
                 or (OUT / p.name).read_bytes() != p.read_bytes()]
    print("stale: " + ", ".join(stale) if stale else "rewards/data is up to date")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
