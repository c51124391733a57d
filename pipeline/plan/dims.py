"""Model dimensions (from config.json, ``model.tiny`` or ``model.size``) and the cluster `pipeline plan` fits into."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from core.model_source import ModelSourceError, is_gguf, is_package_path, resolve

from ..recipe import Recipe, RecipeError, _is_local

GB = 1e9


# ---------------------------------------------------------------------------------------------------------------
# model dimensions


@dataclass
class Dims:
    params: float             # total parameters
    active: float             # parameters used per token (MoE: routed top-k experts)
    hidden: int
    layers: int
    vocab: int
    kv_bytes_per_token: float  # K and V over all layers, bf16
    fp4_params: float         # parameters that MXFP4 targets (MoE experts, else dense MLP projections)
    adam_params: float        # parameters Muon leaves to AdamW (embeddings, head, norms, routers)
    max_context: int | None
    source: str
    moe_act_per_token_layer: float = 0.0  # extra activation bytes per token per MoE layer (k experts' MLPs)

    def describe(self) -> str:
        def n(x):
            return f"{x / 1e9:.3g}B" if x >= 1e9 else f"{x / 1e6:.3g}M"

        act = "" if abs(self.active - self.params) < 1 else f", {n(self.active)} active"
        ctx = f", context {self.max_context:,}" if self.max_context else ""
        return (f"{n(self.params)} params{act}, H={self.hidden:,}, L={self.layers}, V={self.vocab:,}, "
                f"KV {self.kv_bytes_per_token / 1024:.4g} KiB/token{ctx} (from {self.source})")


def dims_from_config(c: dict, source: str) -> Dims:
    """Parameter counts from a transformers config (dense, Qwen-MoE, DeepSeek-MoE and Mixtral field names)."""
    if "hidden_size" not in c and isinstance(c.get("text_config"), dict):
        c = c["text_config"]
    g = c.get
    H, L, V = int(g("hidden_size")), int(g("num_hidden_layers")), int(g("vocab_size"))
    nh = int(g("num_attention_heads") or max(1, H // 128))
    nkv = int(g("num_key_value_heads") or nh)
    hd = int(g("head_dim") or H // nh)
    inter = int(g("intermediate_size") or 4 * H)
    experts = int(g("num_experts") or g("n_routed_experts") or g("num_local_experts") or 0)
    k = int(g("num_experts_per_tok") or 0)
    im = int(g("moe_intermediate_size") or inter)
    shared = int(g("shared_expert_intermediate_size") or 0) or int(g("n_shared_experts") or 0) * im
    if experts:
        dense_layers = int(g("first_k_dense_replace") or 0) or len(g("mlp_only_layers") or [])
    else:
        dense_layers = L
    moe_layers = L - dense_layers
    tied = bool(g("tie_word_embeddings", False))
    emb = V * H * (1 if tied else 2)
    attn = H * nh * hd + 2 * H * nkv * hd + nh * hd * H + 2 * hd
    norms = 2 * H
    dense_mlp, expert = 3 * H * inter, 3 * H * im
    router = H * experts
    common = emb + H + L * (attn + norms) + dense_layers * dense_mlp + moe_layers * (router + 3 * H * shared)
    total = common + moe_layers * experts * expert
    active = common + moe_layers * k * expert
    fp4 = moe_layers * experts * expert if experts else dense_layers * dense_mlp
    return Dims(params=total, active=active, hidden=H, layers=L, vocab=V, kv_bytes_per_token=2 * L * nkv * hd * 2,
                fp4_params=fp4, adam_params=emb + H + L * norms + moe_layers * router,
                max_context=g("max_position_embeddings"), source=source,
                moe_act_per_token_layer=(k * im * 2 * 4 if experts else 0) * moe_layers / max(L, 1))


def dims_from_size(s, source: str) -> Dims:
    p = s.params_b * 1e9
    a = (s.active_params_b or s.params_b) * 1e9
    H, L, V = s.hidden_size, s.num_layers, s.vocab_size
    if s.kv_bytes_per_token:
        kv = s.kv_bytes_per_token
    elif s.num_kv_heads and s.head_dim:
        kv = 2 * L * s.num_kv_heads * s.head_dim * 2
    else:  # assume grouped-query attention with 8x fewer KV heads than H/128 query heads
        kv = 2 * L * H / 8 * 2
    emb = 2 * V * H
    attn = 4 * H * H * L  # upper bound for the non-MLP part per layer
    fp4 = max(0.0, p - emb - attn) if a < p else max(0.0, p - emb - attn)
    return Dims(params=p, active=a, hidden=H, layers=L, vocab=V, kv_bytes_per_token=kv, fp4_params=fp4,
                adam_params=emb + 2 * H * L, max_context=s.max_context, source=source)


def gguf_config(path: str) -> dict:
    """The transformers config dict of a GGUF file (its metadata only; no tensors are read)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    return dict(load_gguf_checkpoint(path, return_tensors=False)["config"])


def model_dims(recipe: Recipe, path: str | None = None, what: str = "model") -> Dims:
    m = recipe.model
    path = m.path if path is None else path
    if what == "model" and m.size is not None:
        return dims_from_size(m.size, "model.size")
    if not path:
        return dims_from_config(m.tiny.model_dump(), "model.tiny")
    if is_package_path(path) or is_gguf(path):
        try:
            local = resolve(path)
        except ModelSourceError as e:
            raise RecipeError(str(e)) from None
        return dims_from_config(gguf_config(local), local)
    cfg = Path(path).expanduser() / "config.json"
    if _is_local(path) and cfg.exists():
        return dims_from_config(json.loads(cfg.read_text()), f"{path}/config.json")
    if what != "model" and m.size is not None:  # a hub-id teacher: assume the student's size
        return dims_from_size(m.size, "model.size (teacher assumed student-sized)")
    raise RecipeError(f"{what} {path!r} is not a local folder with config.json: give its dimensions in model.size "
                      "(params_b, hidden_size, num_layers, vocab_size, ...) for `pipeline plan`")


# ---------------------------------------------------------------------------------------------------------------
# the cluster


@dataclass
class Cluster:
    nodes: int
    gpus: int                  # per node
    gpu_mem_gb: float
    cpus: float                # per node
    ram_gb: float              # per node
    custom: dict = field(default_factory=dict)   # per node
    described: bool = True
    source: str = "--cluster"

    def describe(self) -> str:
        g = f"{self.gpus} GPU x {self.gpu_mem_gb:g} GB, " if self.gpus else "no GPU, "
        extra = "".join(f", {k}={v:g}" for k, v in self.custom.items())
        return f"{self.nodes} node(s) x [{g}{self.cpus:g} CPU, {self.ram_gb:g} GB RAM{extra}] ({self.source})"


def parse_cluster(text: str) -> Cluster:
    vals: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, v = part.partition("=")
        try:
            if not eq:
                raise ValueError
            vals[key.strip()] = float(v)
        except ValueError:
            raise RecipeError(f"--cluster: expected KEY=NUMBER items, got {part!r} "
                              "(keys: nodes, gpus, gpu_mem_gb, cpus, ram_gb, or a custom resource)") from None
    known = {"nodes", "gpus", "gpu_mem_gb", "cpus", "ram_gb"}
    gpus = int(vals.get("gpus", 0))
    if gpus and "gpu_mem_gb" not in vals:
        raise RecipeError("--cluster: gpus given without gpu_mem_gb (memory per GPU, e.g. gpu_mem_gb=141)")
    return Cluster(nodes=max(1, int(vals.get("nodes", 1))), gpus=gpus, gpu_mem_gb=vals.get("gpu_mem_gb", 0.0),
                   cpus=vals.get("cpus", 8.0 * max(gpus, 1)), ram_gb=vals.get("ram_gb", 16.0 * max(gpus * 8, 16)),
                   custom={k: v for k, v in vals.items() if k not in known})


def local_machine(recipe: Recipe) -> Cluster:
    ram = 0.0
    try:
        with open("/proc/meminfo") as f:
            ram = int(f.readline().split()[1]) * 1024 / GB
    except OSError:
        pass
    import glob

    gpus = recipe.ray.num_gpus if recipe.ray.num_gpus is not None else len(glob.glob("/dev/nvidia[0-9]*"))
    return Cluster(nodes=1, gpus=gpus, gpu_mem_gb=80.0 if gpus else 0.0,
                   cpus=float(recipe.ray.num_cpus or os.cpu_count() or 1), ram_gb=ram, source="this machine")
