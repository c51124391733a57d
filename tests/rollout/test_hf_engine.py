"""The hf engine: greedy equals transformers' generate; log-probs match the learner's; groups; sampling masks."""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewards.tasks import generate as gen_tasks
from rollout.encoding import encode_conversation, encode_prompt
from rollout.engine import SamplingParams
from rollout.engines import make_engine
from rollout.hf_engine import process_logits


def _setup(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    prompts = [encode_prompt(tok, [{"role": "user", "content": s["prompt"]}], "think_high")
               for s in gen_tasks("math", "test", 5, 0)]
    return tok, model, prompts


def test_greedy_matches_transformers_generate(tiny_dir):
    tok, model, prompts = _setup(tiny_dir)
    eng = make_engine("hf", model=model, tokenizer=tok)
    outs = eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=12))
    for p, o in zip(prompts, outs):
        ref = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        assert o[0].token_ids == ref[:len(o[0].token_ids)]
        assert o[0].finish_reason == ("stop" if o[0].token_ids[-1] == tok.eos_token_id else "length")


def test_logprobs_and_sampling_mask(tiny_dir):
    tok, model, prompts = _setup(tiny_dir)
    eng = make_engine("hf", model=model, tokenizer=tok)
    params = SamplingParams(n=3, temperature=0.8, top_k=20, top_p=0.9, max_tokens=10, seed=0,
                            return_sampling_mask=True)
    outs = eng.generate(prompts[:2], params)
    assert [len(o) for o in outs] == [3, 3]
    c = outs[1][2]
    with torch.no_grad():
        logits = model(torch.tensor([c.prompt_ids + c.token_ids])).logits[0, len(c.prompt_ids) - 1:-1]
    x = process_logits(logits, 0.8, 20, 0.9)
    lp = torch.log_softmax(x, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
    assert torch.allclose(lp, torch.tensor(c.logprobs), atol=1e-4)
    assert c.sampling_mask is not None and len(c.sampling_mask) == len(c.token_ids)
    for t, allowed in zip(c.token_ids, c.sampling_mask):
        assert t in allowed and len(allowed) <= 20


def test_process_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(process_logits(logits, 1.0, 2, 1.0)[0, 2:]).all()
    kept = torch.isfinite(process_logits(logits, 1.0, 0, 0.7))[0].tolist()
    assert kept == [True, True, False, False]          # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert torch.isfinite(process_logits(logits, 1.0, 0, 1.0)).all()


def test_weight_sync_changes_outputs(tiny_dir):
    tok, model, prompts = _setup(tiny_dir)
    eng = make_engine("hf", model=model, tokenizer=tok)
    other = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    secs = eng.load_weights(other.state_dict())
    assert secs >= 0
    a = eng.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=8))[0][0].token_ids
    b = other.generate(torch.tensor([prompts[0]]), max_new_tokens=8, do_sample=False,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(prompts[0]):].tolist()
    assert a == b[:len(a)]


def test_encoding_matches_chat_template_and_masks_model_tokens(tiny_dir):
    from core.chat import TOOL_CALLS
    from rewards.tasks import demonstration, system_message

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    s = gen_tasks("agent", "train", 1, 0)[0]
    for mode in ("non_think", "think_high", "think_max"):
        msgs = [{"role": "system", "content": system_message("agent")}] + demonstration(s, mode)
        ids, mask = encode_conversation(tok, msgs, mode)
        assert tok.decode(ids) == tok.apply_chat_template(msgs, tokenize=False, mode=mode)
        model_text = tok.decode([i for i, m in zip(ids, mask) if m])
        assert "<|tool|>" not in model_text and "<|user|>" not in model_text and TOOL_CALLS in model_text
        assert "<tool_result>" not in model_text        # tool results come back in the user turn, never trained
        assert model_text.count("<|end|>") == sum(m["role"] == "assistant" for m in msgs)
