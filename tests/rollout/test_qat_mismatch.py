"""Train/rollout mismatch with FP4 rollouts: QAT on keeps it at numerical noise, QAT off does not.

The engine (``hf``) serves MXFP4-dequantized expert weights (``quantized_state_dict`` of the learner). The mismatch
is what GRPO logs each step: mean |Δ log-prob| between the learner's log-probs of the sampled tokens (a forward
over prompt + completion, ``specialists.algos.masked_logprobs``) and the engine's log-probs of the same tokens.
"""
import copy

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewards.tasks import generate as gen_tasks
from rollout.encoding import encode_prompt
from rollout.engine import SamplingParams
from rollout.engines import make_engine
from rollout.fp4 import enable_qat, is_qat_enabled, qat_targets, quantized_state_dict
from specialists.algos import masked_logprobs


def _policy(tiny_dir):
    """The tiny Qwen3-MoE with expert weights scaled up (a random init at std 0.02 gives near-uniform logits, where
    FP4 rounding barely moves a log-prob) so the FP4 error shows in the sampled tokens' log-probs."""
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".experts." in name:
                p.mul_(8.0)
            elif p.ndim >= 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        model.lm_head.weight.mul_(4.0)
    return tok, model


@torch.no_grad()
def _learner_logprobs(model, comps) -> list[torch.Tensor]:
    out = []
    for c in comps:
        ids = torch.tensor([c.prompt_ids + c.token_ids])
        logits = model(ids).logits[:, len(c.prompt_ids) - 1:-1]
        out.append(masked_logprobs(logits, ids[:, len(c.prompt_ids):], temperature=1.0)[0])
    return out


def _mismatch(model, comps) -> float:
    lp = _learner_logprobs(model, comps)
    diffs = torch.cat([(a - torch.tensor(c.logprobs)).abs() for a, c in zip(lp, comps)])
    return float(diffs.mean())


def test_qat_keeps_train_rollout_mismatch_at_noise(tiny_dir):
    tok, model = _policy(tiny_dir)
    learner_qat = copy.deepcopy(model)
    targets = enable_qat(learner_qat)
    assert targets and all(".experts." in t for t in targets) and is_qat_enabled(learner_qat)
    learner_full = model                                    # QAT off: full-precision forward

    # the FP4 engine: a separate model loaded with the learner's MXFP4-dequantized weights (the weight-sync path)
    engine = make_engine("hf", model=copy.deepcopy(model), tokenizer=tok)
    sd = quantized_state_dict(learner_qat)
    assert set(sd) >= set(qat_targets(learner_qat))
    engine.load_weights(sd)
    # both learners share the master weights; only their forward differs
    assert torch.equal(quantized_state_dict(learner_full)[targets[0]], sd[targets[0]])

    prompts = [encode_prompt(tok, [{"role": "user", "content": s["prompt"]}], "think_high")
               for s in gen_tasks("math", "test", 4, 0)]
    outs = engine.generate(prompts, SamplingParams(n=4, temperature=1.0, max_tokens=24, seed=0))
    comps = [c for group in outs for c in group]
    n_tok = sum(len(c.token_ids) for c in comps)
    assert n_tok >= 50

    on = _mismatch(learner_qat, comps)
    off = _mismatch(learner_full, comps)
    print(f"\nmismatch over {n_tok} sampled tokens: QAT on {on:.2e}, QAT off {off:.2e} ({off / max(on, 1e-12):.0f}x)")
    assert on < 1e-4                                        # numerical noise (fp32, batched vs single-sequence)
    assert off > 1e-3                                       # the FP4 rounding the learner does not see
    assert off > 50 * on
