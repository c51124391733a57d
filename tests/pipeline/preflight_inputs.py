"""Inputs for the preflight tests (tests/pipeline/test_preflight*.py): good rows, recipes, model folders, a
stand-in for a finished run directory and its snapshot."""
import json
import os
import struct
from pathlib import Path

ROW = {"messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}],
       "answer": "2"}
CODE_ROW = {"prompt": "def f(x):\n", "completion": "    return x\n", "entry_point": "f",
            "test": "def check(candidate):\n    assert candidate(1) == 1\n"}
TINY = {"vocab_size": 400, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 64,
        "num_hidden_layers": 1, "tokenizer_corpus_per_domain": 40}


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def recipe(t: Path, data_file=None, **over) -> dict:
    data = {"name": "pf", "seed": 1, "ray": {"num_cpus": 2, "num_gpus": 0}, "model": {"tiny": TINY},
            "domains": ["math"], "modes": ["non_think"],
            "tasks": {"math": {"source": "json", "data_files": str(data_file or jsonl(t / "good.jsonl", [ROW] * 6)),
                               "eval_split": "train[:2]", "n_train": 10, "n_eval": 2}},
            "sft": {"steps": 2, "batch_size": 2, "max_len": 64},
            "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 2}}
    for k, v in over.items():
        node, *path = data, *k.split("__")
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return data


def safetensors(path: Path, tensors: dict) -> Path:
    """A safetensors file of zeros: ``{name: shape}`` as F32."""
    header, off = {}, 0
    for name, shape in tensors.items():
        n = 4 * int(__import__("math").prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * off)
    return path


def model_dir(t: Path, embed=(400, 64), tokenizer: str | None = "ok", template=True) -> Path:
    d = t / "model"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "qwen3", "vocab_size": 400, "hidden_size": 64,
                                               "num_hidden_layers": 1}))
    safetensors(d / "model.safetensors", {"model.embed_tokens.weight": list(embed),
                                          "model.layers.0.input_layernorm.weight": [64],
                                          "lm_head.weight": [400, 64]})
    if tokenizer == "ok":
        from tokenizers import Tokenizer, models

        tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
        tok.save(str(d / "tokenizer.json"))
        cfg = {"chat_template": "{{ messages }}"} if template else {}
        (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    elif tokenizer is not None:
        (d / "tokenizer.json").write_text(tokenizer)
    return d


def finished_run(d: Path) -> Path:
    """A small stand-in for a finished run directory: manifests, a model file, metrics."""
    for sid in ("bootstrap", "sft.math"):
        (d / sid / "final").mkdir(parents=True)
        (d / sid / "manifest.json").write_text(json.dumps({"id": sid, "status": "complete", "config_hash": "x"}))
        (d / sid / "final" / "model.safetensors").write_bytes(os.urandom(256))
        (d / sid / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (d / "recipe.yaml").write_text("name: pf\n")
    return d


def snapshot(d: Path) -> dict:
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(d))] = (p.read_bytes() if p.is_file() else None, st.st_mtime_ns)
    return out
