"""The engine interface every stage generates through.

An engine turns prompts (chat messages or token ids) into completions and reports, per sampled token, the log-prob
under the sampling distribution and, when asked, the Keep-Sampling-Mask information (which tokens top-k/top-p left
allowed at each step) and the experts every MoE router chose for every token the engine ran through the model
(Keep Routing; layout in ``rollout.routes``). The engines (``hf``: transformers with our own batched sampler;
``vllm``: vLLM's offline engine inside a Ray actor) are made by name through ``rollout.engines.make_engine``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0            # 0 = no top-k truncation
    max_tokens: int = 64
    stop: tuple[str, ...] = ()   # stop strings (the tokenizer's eos always stops)
    seed: int | None = None
    return_sampling_mask: bool = False
    # Keep Routing: fill Completion.routed_experts (the vllm engine must have been started with
    # return_routed_experts=True; the hf engine always can)
    return_routed_experts: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]           # sampled tokens, eos included when it ended the sequence
    text: str                      # decoded token_ids, special tokens kept
    logprobs: list[float]          # log-prob of each sampled token under the (temperature-scaled, truncated) sampler
    finish_reason: str             # "stop" (eos or stop string) or "length"
    # Keep Sampling Mask: for each step, the ids the top-k/top-p truncation kept (None when not asked or no truncation)
    sampling_mask: list[list[int]] | None = None
    prompt_index: int = 0          # which prompt of the batch this completion belongs to
    # Keep Routing (when asked): np.int16 [len(prompt_ids) + len(token_ids) - 1, n_moe_layers, k], row p = the experts
    # the token at position p of prompt_ids + token_ids was routed to (the last sampled token never runs: no row),
    # layer axis = MoE routers in model order, -1 = no route; see rollout.routes
    routed_experts: np.ndarray | None = None


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt (token ids), ``params.n`` completions."""

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> float:
        """Replace the engine's weights with the learner's (no disk round trip); returns seconds taken."""

    def close(self) -> None: ...
