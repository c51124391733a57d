"""The rollout tests' random tiny Qwen3-MoE and byte-level BPE tokenizer, built on disk in transformers' format."""
from __future__ import annotations

import random

import torch

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "home", "one", "two", "three", "is", "and"]


def build_tiny_moe(folder, config: dict, seed: int = 0, corpus_lines: int = 2000, decisive_routers: bool = False):
    """Save a random fp32 Qwen3-MoE with ``config`` and a 512-token BPE tokenizer to ``folder``; returns both.

    ``decisive_routers``: random init leaves the routers near uniform; redraw their weights so choices are clear-cut."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3MoeConfig

    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(12)) + f" {rng.randint(0, 999)}" for _ in range(corpus_lines)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=512, special_tokens=["<|pad|>", "<|bos|>", "<|end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>")
    fast.save_pretrained(folder)
    cfg = Qwen3MoeConfig(**config, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    if decisive_routers:
        from rollout.routes import find_router_modules

        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for _, m in find_router_modules(model):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
    model.save_pretrained(folder)
    return model, fast
