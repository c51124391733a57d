"""The ``hf`` engine: transformers models with a KV cache and our own batched sampler.

Fastest for tiny models on CPU. Prompts of one group share their prefix work: each distinct prompt is prefilled
once and its KV cache repeated ``n`` times. Sampling applies temperature, then top-k, then top-p; the log-prob
returned for each token is under that processed distribution (what the learner compares against), and
``return_sampling_mask`` gives the ids the truncation kept at each step (Keep Sampling Mask).

Keep Routing: ``return_routed_experts`` records, with forward hooks on the MoE router modules
(``rollout.routes.capture``), the experts chosen for every prompt position in the shared prefill and for every token
fed in a decode step; ``Completion.routed_experts`` holds them in the layout of ``rollout.routes`` (left padding
dropped, the prefill rows repeated for each sample of a group, rows of a sequence end at its last fed token). The
hooks exist only during a generation that asks for routes.
"""
from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from . import routes as routes_mod
from .engine import Completion, SamplingParams


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
                 max_batch: int = 256, return_routed_experts: bool = True):
        """``return_routed_experts``: accepted for symmetry with the ``vllm`` engine; routes cost nothing here unless
        a request asks for them (``SamplingParams.return_routed_experts``), so they are always available."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = model if model is not None else AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_path)
        self.model.eval()
        self.max_batch = max_batch
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self._routers: list | None = None

    def routers(self) -> list[tuple[str, torch.nn.Module]]:
        """(name, module) of the model's MoE routers, model order (``rollout.routes.find_router_modules``)."""
        if self._routers is None:
            self._routers = routes_mod.find_router_modules(self.model)
        return self._routers

    @property
    def moe_layer_ids(self) -> list[int]:
        """The decoder layer of each entry of the routes' layer axis."""
        return routes_mod.moe_layer_ids([n for n, _ in self.routers()])

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
        dev = next(self.model.parameters()).device
        lens = [len(p) for p in prompts]
        T = max(lens)
        ids = torch.full((len(prompts), T), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(prompts), T), dtype=torch.long)
        for i, p in enumerate(prompts):                      # left padding
            ids[i, T - len(p):] = torch.tensor(p)
            attn[i, T - len(p):] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        routers = self.routers() if params.return_routed_experts else []
        if params.return_routed_experts and not routers:
            raise ValueError(f"return_routed_experts: {type(self.model).__name__} has no MoE router modules")
        with (routes_mod.capture([m for _, m in routers], [nm for nm, _ in routers], dtype=torch.int16) if routers
              else nullcontext()) as steps:
            result = self._decode(prompts, params, gen, ids, attn, pos)
        if routers:
            per_seq = routes_mod.sequence_routes(steps, [len(p) for p in prompts], params.n,
                                                 [len(c.token_ids) for comps in result for c in comps])
            for i, c in enumerate(c for comps in result for c in comps):
                c.routed_experts = per_seq[i]
        return result

    def _decode(self, prompts, params: SamplingParams, gen, ids, attn, pos) -> list[list[Completion]]:
        n, dev = params.n, ids.device
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
        for step in range(params.max_tokens):
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
            if not alive.any() or step == params.max_tokens - 1:   # the last sampled tokens are never fed
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
