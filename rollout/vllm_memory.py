"""Engine memory in absolute terms, and the one-line start-up error (rollout/vllm_engine.py).

vLLM's CPU backend would read ``gpu_memory_utilization`` as a fraction of the NUMA node's memory, which differs
between machines of one kind; the engines here are given their KV cache in bytes instead (``kv_cache_memory_bytes``)
and, when one cannot start, say in one line what they asked for and what the node has.
"""
from __future__ import annotations

import os
import re

import torch

MiB = 1 << 20
GiB = 1 << 30

# The tiny models (pipeline's embedded Qwen3-MoE and the tests': 2 layers x 1 KV head x head_dim 64, float32) hold
# 2 * 2 * 1 * 64 * 4 B = 1 KiB of KV per token, so 256 MiB is 256 Ki tokens: 128 sequences at the engine's default
# max_model_len 2048 (the recipe's GRPO batch is 8 prompts x 8 = 64 sequences) or 512 at the tiny model's 512
# positions (engine.max_batch 256). vLLM queues / preempts what does not fit, so this bounds concurrency, not
# correctness. Real models on GPU should set it (or leave None there: gpu_memory_utilization profiling).
DEFAULT_KV_CACHE_BYTES = 256 * MiB

_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp8": 1, "float8": 1}


class EngineStartError(RuntimeError):
    """An engine could not start; the message is one line (engine, model, KV memory asked, memory found, reason)."""


def format_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.4g} {unit}"
    return f"{int(n)} B"


def kv_bytes_per_token(config: dict, dtype: str | torch.dtype = "float32") -> int:
    """KV-cache bytes one token takes in all layers: 2 (K and V) x layers x KV heads x head_dim x dtype bytes."""
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    return 2 * int(config["num_hidden_layers"]) * kv_heads * head_dim * _DTYPE_BYTES[str(dtype)]


def kv_cache_bytes_for(config: dict, dtype: str | torch.dtype, max_model_len: int, num_seqs: int = 1) -> int:
    """KV bytes that hold ``num_seqs`` sequences of ``max_model_len`` tokens at once (vLLM needs >= 1 such)."""
    return kv_bytes_per_token(config, dtype) * max_model_len * num_seqs


def _numa_node_of_cpu(cpu: int, root: str) -> int | None:
    for entry in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if not re.fullmatch(r"node\d+", entry):
            continue
        try:
            with open(os.path.join(root, entry, "cpulist")) as f:
                spec = f.read().strip()
        except OSError:
            continue
        for part in filter(None, spec.split(",")):
            lo, _, hi = part.partition("-")
            if int(lo) <= cpu <= int(hi or lo):
                return int(entry[4:])
    return None


def node_memory(node: int | None = None, root: str = "/sys/devices/system/node") -> tuple[int | None, int, int]:
    """(node, available, total) bytes of the NUMA node vLLM's CPU worker allocates on.

    The node is that of this process's first allowed CPU (as vLLM picks it); available is vLLM's formula (MemFree +
    Active(file) + Inactive(file) + SReclaimable, ``get_memory_node_info`` in ``vllm/utils/cpu_resource_utils.py``).
    Without per-node meminfo: the whole machine (node None)."""
    if node is None:
        try:
            node = _numa_node_of_cpu(min(os.sched_getaffinity(0)), root)
        except (AttributeError, OSError, ValueError):
            node = None
        if node is None and os.path.exists(os.path.join(root, "node0", "meminfo")):
            node = 0
    path = os.path.join(root, f"node{node}", "meminfo")
    if node is None or not os.path.exists(path):
        import psutil

        vm = psutil.virtual_memory()
        return None, int(vm.available), int(vm.total)
    info = {}
    with open(path) as f:
        for line in f:                                  # "Node 0 MemTotal:   9398476 kB"
            parts = line.split()
            if len(parts) >= 4:
                info[parts[2].rstrip(":")] = int(parts[3]) * 1024
    avail = sum(info.get(k, 0) for k in ("MemFree", "Active(file)", "Inactive(file)", "SReclaimable"))
    return node, avail, info["MemTotal"]


def memory_found(on_cpu: bool) -> str:
    """The memory the engine's device has, in words: "6.68 GiB available of 9.84 GiB on NUMA node 0"."""
    if not on_cpu:
        try:
            free, total = torch.cuda.mem_get_info()
            return f"{format_bytes(free)} free of {format_bytes(total)} on cuda:{torch.cuda.current_device()}"
        except Exception:  # noqa: BLE001
            pass
    node, avail, total = node_memory()
    where = "this machine" if node is None else f"NUMA node {node}"
    return f"{format_bytes(avail)} available of {format_bytes(total)} on {where}"


def start_error_message(model_path: str, kv_asked: str, found: str, reason: str) -> str:
    """One line: ``vllm engine for MODEL did not start: asked KV ..., found ...: REASON``."""
    reason = " ".join(str(reason).split())
    if len(reason) > 600:
        reason = reason[:600] + "..."
    return f"vllm engine for {model_path} did not start: asked {kv_asked}, found {found}: {reason}"


def _kv_asked(kv_cache_bytes: int | None, gpu_memory_utilization: float) -> str:
    if kv_cache_bytes is None:
        return f"gpu_memory_utilization {gpu_memory_utilization:g} of the GPU (KV cache from profiling)"
    return f"{format_bytes(kv_cache_bytes)} KV cache"
