"""The engine interface every stage generates through.

An engine turns prompts (chat messages or token ids) into completions and reports, per sampled token, the log-prob
under the sampling distribution and, when asked, the Keep-Sampling-Mask information (which tokens top-k/top-p left
allowed at each step). Engines live in a registry (``ENGINES``): ``hf`` (transformers, our own batched sampler) and
``vllm`` (vLLM's offline engine inside a Ray actor).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch


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


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt (token ids), ``params.n`` completions."""

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> float:
        """Replace the engine's weights with the learner's (no disk round trip); returns seconds taken."""

    def close(self) -> None: ...


ENGINES: dict[str, Callable[..., Engine]] = {}


def register_engine(name: str):
    def deco(factory):
        ENGINES[name] = factory
        return factory
    return deco


def make_engine(name: str, **kwargs) -> Engine:
    if name not in ENGINES:
        # engines register on import; import the built-in ones lazily so vLLM is only imported when asked for
        if name == "hf":
            from . import hf_engine  # noqa: F401
        elif name == "vllm":
            from . import vllm_engine  # noqa: F401
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; expected one of hf, vllm")
    return ENGINES[name](**kwargs)
