"""Preflight of ``model.path`` / ``model.tokenizer`` without loading a weight (``pipeline.preflight``).

* A Hugging Face folder: ``config.json`` parses; every ``*.safetensors`` file's header parses (the 8-byte length
  and the JSON header only: names, dtypes, shapes, offsets inside the file) and its shapes agree with
  ``config.json`` (the embedding and LM head ``[vocab_size, hidden_size]``, the layer count); a sharded index names
  files that exist.
* A GGUF file: the fixed header (magic ``GGUF``, version 1-3, tensor and metadata counts), parsed here (no ``gguf``
  package).
* The tokenizer loads (``tokenizer.json`` with ``tokenizers``; a sentencepiece-only folder with transformers). Its
  ids against the model's vocabulary are ``pipeline.recipe.check_vocab``'s check. A missing chat template is only
  noted: ``bootstrap`` installs the pipeline's own three-mode template (``core.chat.CHAT_TEMPLATE``) on any model.

Every problem is a :class:`~pipeline.recipe.RecipeError` of one line. No torch, except :func:`check_fp4` (the
learner's and the engine's MXFP4 targets, compared on meta tensors) when it has something to compare.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from .recipe import RecipeError, _is_local

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2,
               "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1, "F6_E2M3": 1,
               "F6_E3M2": 1, "C64": 8}
_EMBED = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight")
_MAX_HEADER = 100 << 20     # safetensors' own limit on the JSON header


def _resolve(p: str, key: str) -> str:
    """``package:<module>/<file>`` through ``core.model_source`` when that module exists (issue 23), else as is."""
    if str(p).startswith("package:"):
        try:
            from core.model_source import ModelSourceError, resolve
        except ImportError:
            return p
        try:
            return resolve(p, key)
        except ModelSourceError as e:
            raise RecipeError(str(e)) from None
    return str(Path(p).expanduser()) if str(p).startswith("~") else str(p)


def gguf_header(path: Path, key: str) -> dict:
    """GGUF's fixed header: magic, version, tensor count, metadata count (GGUF v1 counts are 32-bit)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 4 or head[:4] != b"GGUF":
        raise RecipeError(f"{key}: {path}: not a GGUF file (starts with {head[:4]!r}, expected b'GGUF')")
    if len(head) < 8:
        raise RecipeError(f"{key}: {path}: truncated GGUF header ({len(head)} bytes)")
    version = struct.unpack("<I", head[4:8])[0]
    if version not in (1, 2, 3):
        raise RecipeError(f"{key}: {path}: unsupported GGUF version {version} (known: 1, 2, 3)")
    fmt, size = ("<II", 8) if version == 1 else ("<QQ", 16)
    if len(head) < 8 + size:
        raise RecipeError(f"{key}: {path}: truncated GGUF header ({len(head)} bytes)")
    tensors, kvs = struct.unpack(fmt, head[8:8 + size])
    if not 0 < tensors < 1 << 24 or kvs >= 1 << 24:
        raise RecipeError(f"{key}: {path}: GGUF header counts {tensors} tensors and {kvs} metadata entries")
    return {"version": version, "tensors": tensors, "metadata": kvs}


def safetensors_header(path: Path, key: str) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then the header): every tensor's
    dtype, shape and byte range checked against each other and the file's size. No tensor data is read."""
    size = path.stat().st_size
    bad = f"{key}: {path}: not a safetensors file"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise RecipeError(f"{bad} ({size} bytes)")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, _MAX_HEADER):
            raise RecipeError(f"{bad} (header length {n} exceeds the file size {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RecipeError(f"{bad} (its {n}-byte header is not JSON)") from None
    if not isinstance(header, dict):
        raise RecipeError(f"{bad} (its header is not a JSON object)")
    data = size - 8 - n
    for name, t in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(t, dict) and t.get("dtype") in DTYPE_BYTES and isinstance(t.get("shape"), list) \
            and all(isinstance(d, int) and d >= 0 for d in t["shape"]) and isinstance(t.get("data_offsets"), list) \
            and len(t["data_offsets"]) == 2 and all(isinstance(o, int) for o in t["data_offsets"])
        if not ok:
            raise RecipeError(f"{key}: {path}: tensor {name!r}: malformed header entry {json.dumps(t)[:120]}")
        a, b = t["data_offsets"]
        want = math.prod(t["shape"]) * DTYPE_BYTES[t["dtype"]]
        if t["dtype"] in ("F4", "F6_E2M3", "F6_E3M2"):      # sub-byte types: bits, rounded up
            want = -(-math.prod(t["shape"]) * (4 if t["dtype"] == "F4" else 6) // 8)
        if not 0 <= a <= b <= data or b - a != want:
            raise RecipeError(f"{key}: {path}: tensor {name!r} ({t['dtype']} {t['shape']}) has bytes {a}..{b} "
                              f"of {data}: the file is truncated or corrupt")
    return {k: v for k, v in header.items() if k != "__metadata__"}


def _config(folder: Path, key: str) -> dict:
    f = folder / "config.json"
    try:
        c = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise RecipeError(f"{key}: {f}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(c, dict):
        raise RecipeError(f"{key}: {f}: expected a JSON object")
    return c.get("text_config") if "hidden_size" not in c and isinstance(c.get("text_config"), dict) else c


def _weights(folder: Path, key: str) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RecipeError(f"{key}: {index}: not a safetensors index (no weight_map)") from None
        for n in names:
            if not (folder / n).exists():
                raise RecipeError(f"{key}: {index} names {n}, which is missing")
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def check_shapes(tensors: dict, config: dict, key: str, where: str) -> None:
    """The embedding / LM head is [vocab_size, hidden_size] and the layers are numbered 0..num_hidden_layers-1."""
    V, H, L = config.get("vocab_size"), config.get("hidden_size"), config.get("num_hidden_layers")
    for name, t in tensors.items():
        if name.endswith(_EMBED) or name.endswith("lm_head.weight"):
            if len(t["shape"]) != 2 or (V and t["shape"][0] != V) or (H and t["shape"][1] != H):
                raise RecipeError(f"{key}: {where}: {name} has shape {t['shape']} but config.json says "
                                  f"[vocab_size, hidden_size] = [{V}, {H}]")
    layers = {int(p[i + 1]) for name in tensors for p in [name.split(".")] for i in range(len(p) - 1)
              if p[i] in ("layers", "h", "blocks") and p[i + 1].isdigit()}
    if L and layers and max(layers) + 1 != L:
        raise RecipeError(f"{key}: {where}: the weights have {max(layers) + 1} layers but config.json says "
                          f"num_hidden_layers {L}")


def check_files(model) -> list[str]:
    """Before the recipe's file checks read them: GGUF headers (``model.path``, ``model.tokenizer``) and the
    tokenizer loads. Returns what was checked, one phrase each."""
    if not model.path:
        return ["embedded tiny model and tokenizer (bootstrap builds them)"]
    notes = []
    for key, given in (("model.path", model.path), ("model.tokenizer", model.tokenizer)):
        p = Path(_resolve(given, key)) if given else None
        if p is not None and p.is_file() and str(p).lower().endswith(".gguf"):
            h = gguf_header(p, key)
            notes.append(f"{key}: GGUF v{h['version']} header, {h['tensors']} tensors, {h['metadata']} metadata "
                         "entries")
    return notes + check_tokenizer(model.tokenizer or model.path)


def check_model(model) -> list[str]:
    """After the recipe's file checks: the weights' safetensors headers against ``config.json``. Returns what was
    checked, one phrase each."""
    if not model.path:
        return ["embedded tiny model (bootstrap builds it)"]
    notes = []
    path = _resolve(model.path, "model.path")
    p = Path(path)
    if not _is_local(path):
        notes.append(f"{path}: a hub id, not checked offline")
    elif p.is_file():
        notes.append("a single file (GGUF: header checked above)")
    elif p.is_dir() and (p / "config.json").exists():
        config = _config(p, "model.path")
        files = _weights(p, "model.path")
        if not files and not list(p.glob("*.bin")) and not list(p.glob("*.gguf")):
            raise RecipeError(f"model.path: {path}: no weights (*.safetensors or pytorch_model*.bin)")
        tensors: dict = {}
        for f in files:
            tensors.update(safetensors_header(f, "model.path"))
        if files:
            check_shapes(tensors, config, "model.path", str(files[0]) if len(files) == 1 else path)
            n = sum(math.prod(t["shape"]) for t in tensors.values())
            notes.append(f"{len(files)} safetensors header(s): {len(tensors)} tensors, {n / 1e6:.1f} M parameters, "
                         f"shapes agree with config.json")
        else:
            notes.append("weights not in safetensors: headers not checked")
    return notes + check_tokenizer(model.tokenizer or model.path, load=True)


def check_tokenizer(tok_path: str, load: bool = False) -> list[str]:
    """The tokenizer at ``tok_path``: its files are there and parse, whether it has a chat template (noted); with
    ``load``, it loads (``tokenizers``; a folder without ``tokenizer.json`` with transformers)."""
    key = "model.tokenizer"
    path = _resolve(tok_path, key)
    p = Path(path)
    if not _is_local(path) or not p.exists():
        return []
    if p.is_file():
        if str(p).lower().endswith(".gguf"):
            return [] if load else ["tokenizer from the GGUF metadata"]
        raise RecipeError(f"{key}: {path}: expected a tokenizer folder")
    fast = p / "tokenizer.json"
    if load and fast.exists():
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(fast))
        except Exception as e:  # noqa: BLE001 — whatever the Rust parser says, in one line
            raise RecipeError(f"{key}: {fast}: cannot load ({str(e).splitlines()[0][:160]})") from None
        return [f"tokenizer loads ({tok.get_vocab_size(with_added_tokens=True)} tokens)"]
    if load:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(p))
        except Exception as e:  # noqa: BLE001
            raise RecipeError(f"{key}: {path}: cannot load the tokenizer ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
        return [f"tokenizer loads ({len(tok)} tokens)"]
    if fast.exists():
        try:
            json.loads(fast.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            raise RecipeError(f"{key}: {fast}: not valid JSON ({getattr(e, 'msg', e)}{where})") from None
    elif not ((p / "tokenizer.model").exists() or (p / "vocab.json").exists()):
        raise RecipeError(f"{key}: {path}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    cfg = p / "tokenizer_config.json"
    try:
        has_template = bool(json.loads(cfg.read_text()).get("chat_template")) if cfg.exists() else False
    except (ValueError, AttributeError):
        raise RecipeError(f"{key}: {cfg}: not valid JSON") from None
    if not has_template and not (p / "chat_template.jinja").exists():
        return ["no chat template: none needed, bootstrap installs the pipeline's three-mode template"]
    return []


def check_fp4(recipe, graph) -> list[str]:
    """``qat: mxfp4`` in a stage's learner with a fleet that serves MXFP4: the weights the learner fake-quantizes are
    the weights the engine packs on every weight push (``rollout.vllm_engine.fp4_coverage``, from the names and
    shapes of the model's safetensors headers; torch is imported only here). A local folder only: a hub id is not
    read offline, and the embedded tiny model is MoE (its experts on both sides)."""
    stages = [s for s in graph if getattr(getattr(s.config, "learner", None), "qat", None) == "mxfp4"]
    if not stages or recipe.fleet is None or not recipe.fleet.fp4 or not recipe.model.path:
        return []
    key = "learner.qat" if recipe.learner.qat == "mxfp4" else f"{stages[0].config_key}.learner.qat"
    path = _resolve(recipe.model.path, "model.path")
    p = Path(path)
    files = _weights(p, "model.path") if _is_local(path) and p.is_dir() else []
    if not files:
        return ["fp4: learner/engine MXFP4 targets not compared (no local safetensors)"]
    shapes = {}
    for f in files:
        shapes.update({n: tuple(t["shape"]) for n, t in safetensors_header(f, "model.path").items()})
    from rollout.vllm_engine import fp4_coverage

    try:
        learner, engine = fp4_coverage(shapes)
    except ValueError as e:
        raise RecipeError(f"{key}: mxfp4: {e}") from None
    if not learner:
        raise RecipeError(f"{key}: mxfp4 finds no MXFP4 target in {path} (no routed experts, no "
                          "mlp.gate_proj/up_proj/down_proj): the learner would train without fake-quant")
    if learner != engine:
        only_l, only_e = sorted(set(learner) - set(engine)), sorted(set(engine) - set(learner))
        raise RecipeError(f"{key}: mxfp4 fake-quantizes {len(learner)} weights of {path} but the fleet's MXFP4 "
                          f"packing (fleet.fp4) covers {len(engine)}: only in QAT {only_l[:3]} ({len(only_l)}), "
                          f"only in the engine {only_e[:3]} ({len(only_e)})")
    return [f"fp4: learner.qat and the fleet's MXFP4 packing cover the same {len(learner)} weights"]
