"""Stage ``bootstrap``: the starting model and tokenizer every other stage builds on.

With no ``model.path`` it builds the embedded default offline: a byte-level BPE tokenizer trained (with
``tokenizers``) on the task generators' text, the chat special tokens, a chat template that renders the three
reasoning modes DeepSeek's way, and a tiny Qwen3-MoE from a transformers config. With ``model.path`` it loads that
model and tokenizer, adds any missing chat tokens and installs the same template. Either way ``final/`` is a
standard Hugging Face folder.

    pipeline run recipes/think_max.yaml --only bootstrap
"""
from __future__ import annotations

from core.chat import BOS, CHAT_TEMPLATE, END, PAD, SPECIAL_TOKENS


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (digits split one by one, so numbers stay learnable) wrapped as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # train on the plain text between special tokens, so merges never span them
    import re

    pieces = re.split("|".join(re.escape(t) for t in SPECIAL_TOKENS), "\n".join(texts))
    tok.train_from_iterator([p for p in pieces if p], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=END, pad_token=PAD,
                                   additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (BOS, END, PAD)])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def tiny_model(cfg, tokenizer, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    vocab = -(-len(tokenizer) // 64) * 64
    config = Qwen3MoeConfig(
        vocab_size=vocab, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        moe_intermediate_size=cfg.moe_intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim, num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False, norm_topk_prob=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.02, dtype="float32")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def adopt_model(path: str, tokenizer_path: str | None, dtype: str):
    """An existing causal LM: add the chat tokens it lacks (resizing embeddings) and install the mode template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path or path)
    missing = [t for t in SPECIAL_TOKENS if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    if tok.pad_token is None:
        tok.pad_token = PAD
    tok.bos_token, tok.eos_token = BOS, END
    tok.chat_template = CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def run(ctx) -> dict:
    from rewards.tasks import corpus

    m = ctx.config.model
    if m.path:
        ctx.log.info(f"[bootstrap] adopting {m.path}")
        model, tok = adopt_model(m.path, m.tokenizer, m.dtype)
    else:
        texts = corpus(ctx.seed, m.tiny.tokenizer_corpus_per_domain)
        tok = train_tokenizer(texts, m.tiny.vocab_size)
        model = tiny_model(m.tiny, tok, ctx.seed)
        ctx.log.info(f"[bootstrap] tokenizer: {len(tok)} tokens from {len(texts)} texts; "
                     f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")

    def write(folder):
        model.save_pretrained(str(folder), safe_serialization=True)
        tok.save_pretrained(str(folder))

    ctx.publish(write)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "vocab": len(tok)}
