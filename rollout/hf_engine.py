"""The ``hf`` engine: transformers models with a KV cache and our own batched sampler.

Fastest for tiny models on CPU. Prompts of one group share their prefix work: each distinct prompt is prefilled
once and its KV cache repeated ``n`` times. Sampling applies temperature, then top-k, then top-p; the log-prob
returned for each token is under that processed distribution (what the learner compares against), and
``return_sampling_mask`` gives the ids the truncation kept at each step (Keep Sampling Mask).
"""
from __future__ import annotations

import time

import torch

from .engine import Completion, SamplingParams, register_engine


def process_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, top-k, top-p on ``[B, V]`` logits; removed entries become -inf. Pure function."""
    x = logits.float() / (temperature if temperature > 0 else 1.0)
    if top_k and top_k < x.size(-1):
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, idx = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        cum = probs.cumsum(-1)
        remove = (cum - probs) > top_p          # keep the smallest prefix whose mass reaches top_p
        remove[..., 0] = False
        x = x.masked_fill(torch.zeros_like(remove).scatter(-1, idx, remove), float("-inf"))
    return x


class HFEngine:
    name = "hf"

    def __init__(self, model=None, tokenizer=None, model_path: str | None = None, dtype=torch.float32,
                 max_batch: int = 256):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = model if model is not None else AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_path)
        self.model.eval()
        self.max_batch = max_batch
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> float:
        t = time.perf_counter()
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        if unexpected or [k for k in missing if not k.endswith("rotary_emb.inv_freq")]:
            raise ValueError(f"weight sync: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return time.perf_counter() - t

    def close(self) -> None:
        pass

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        out: list[list[Completion]] = [[] for _ in prompts]
        per_chunk = max(1, self.max_batch // max(1, params.n))
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        for start in range(0, len(prompts), per_chunk):
            chunk = prompts[start:start + per_chunk]
            for i, comps in enumerate(self._generate_chunk(chunk, params, gen)):
                for c in comps:
                    c.prompt_index = start + i
                out[start + i] = comps
        return out

    @torch.no_grad()
    def _generate_chunk(self, prompts, params: SamplingParams, gen) -> list[list[Completion]]:
        n, dev = params.n, next(self.model.parameters()).device
        lens = [len(p) for p in prompts]
        T = max(lens)
        ids = torch.full((len(prompts), T), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(prompts), T), dtype=torch.long)
        for i, p in enumerate(prompts):                      # left padding
            ids[i, T - len(p):] = torch.tensor(p)
            attn[i, T - len(p):] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1]
        if n > 1:                                            # share the prefill across the group
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, 0)
            attn = attn.repeat_interleave(n, 0)
            pos = pos.repeat_interleave(n, 0)
        B = logits.size(0)
        next_pos = pos[:, -1:] + 1
        tokens = [[] for _ in range(B)]
        logps = [[] for _ in range(B)]
        masks = [[] for _ in range(B)] if params.return_sampling_mask else None
        finish = [None] * B
        alive = torch.ones(B, dtype=torch.bool, device=dev)
        stop_strs = [s for s in params.stop if s]
        for _ in range(params.max_tokens):
            if params.greedy:
                x = logits.float()
                nxt = x.argmax(-1)
            else:
                x = process_logits(logits, params.temperature, params.top_k, params.top_p)
                nxt = torch.multinomial(torch.softmax(x, -1), 1, generator=gen).squeeze(-1)
            lp = torch.log_softmax(x, -1).gather(-1, nxt[:, None]).squeeze(-1)
            truncated = params.return_sampling_mask and not params.greedy and (params.top_k or params.top_p < 1)
            nxt_l, lp_l = nxt.tolist(), lp.tolist()
            for b in torch.nonzero(alive).flatten().tolist():
                t = nxt_l[b]
                tokens[b].append(t)
                logps[b].append(lp_l[b])
                if masks is not None:
                    masks[b].append(torch.isfinite(x[b]).nonzero().flatten().tolist() if truncated else None)
                if t == self.eos_id:
                    finish[b] = "stop"
                elif stop_strs:
                    tail = self.tokenizer.decode(tokens[b][-16:], skip_special_tokens=False)
                    if any(s in tail for s in stop_strs):
                        finish[b] = "stop"
                if finish[b]:
                    alive[b] = False
            if not alive.any():
                break
            feed = torch.where(alive, nxt, torch.full_like(nxt, self.pad_id))
            attn = torch.cat([attn, alive.long()[:, None]], dim=1)
            out = self.model(input_ids=feed[:, None], attention_mask=attn, position_ids=next_pos,
                             past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1]
            next_pos = next_pos + 1
        result = [[] for _ in prompts]
        for b in range(B):
            pi = b // n
            m = masks[b] if masks is not None and any(v is not None for v in masks[b]) else None
            result[pi].append(Completion(
                prompt_ids=list(prompts[pi]), token_ids=tokens[b],
                text=self.tokenizer.decode(tokens[b], skip_special_tokens=False), logprobs=logps[b],
                finish_reason=finish[b] or "length", sampling_mask=m, prompt_index=pi))
        return result


@register_engine("hf")
def make_hf_engine(**kwargs) -> HFEngine:
    return HFEngine(**kwargs)
