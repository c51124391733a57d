"""Stage ``bootstrap``: the starting model and tokenizer every other stage builds on.

With no ``model.path`` it builds the embedded default offline: a byte-level BPE tokenizer trained (with
``tokenizers``) on the task generators' text, the chat special tokens, a chat template that renders the three
reasoning modes DeepSeek's way, and a tiny Qwen3-MoE from a transformers config. With ``model.path`` it loads that
model and tokenizer, adds any missing chat tokens and installs the same template. Either way ``final/`` is a
standard Hugging Face folder.

    pipeline run recipes/think_max.yaml --only bootstrap
"""
from __future__ import annotations

from pathlib import Path

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


def load_source(path: str, tokenizer_path: str | None, dtype: str):
    """The model and tokenizer ``model.path`` names (:mod:`core.model_source`): a Hugging Face folder, or a GGUF
    file (a path or ``package:<module>/<file>``), dequantized on load and rebuilt as an ordinary transformers model
    (``save_pretrained`` refuses a GGUF-loaded one: its config carries the GGUF quantization entry)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.model_source import is_gguf, resolve

    src, tok_src = resolve(path), resolve(tokenizer_path, "model.tokenizer") if tokenizer_path else None
    torch_dtype = getattr(torch, dtype)
    if not is_gguf(src):
        tok = AutoTokenizer.from_pretrained(tok_src or src)
        return AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype), tok
    folder, name = str(Path(src).parent), Path(src).name
    if tok_src is None:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    elif is_gguf(tok_src):
        tok = AutoTokenizer.from_pretrained(str(Path(tok_src).parent), gguf_file=Path(tok_src).name)
    else:
        tok = AutoTokenizer.from_pretrained(tok_src)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"model.path: {path}: the GGUF weights do not fit their own config "
                         f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    return model.to(torch_dtype), tok


def init_from_pieces(model, pieces: dict[int, list[int]]) -> None:
    """Each added token's input (and untied output) embedding starts at the mean of the rows of ``pieces[id]``: the
    model's own counterpart (its EOS for ``<|end|>``), else the pieces its text had before it became one token
    (``<|user|>`` -> ``<``, ``|``, ``user``, ...): the model meets the chat tokens near what it already reads
    there, not at a random point."""
    import torch

    layers = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != layers[0].data_ptr():
        layers.append(out.weight)
    with torch.no_grad():
        for new_id, ids in pieces.items():
            if ids:
                for w in layers:
                    w[new_id] = w[ids].mean(dim=0)


def adopt_model(path: str, tokenizer_path: str | None, dtype: str):
    """An existing causal LM: add the chat tokens it lacks (resizing embeddings: new rows start at the mean of the
    old ones, transformers' default) and install the mode template."""
    model, tok = load_source(path, tokenizer_path, dtype)
    missing = [t for t in SPECIAL_TOKENS if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    # where the model has its own end / begin / pad token, ours starts as a copy of it (a chat model already ends
    # its turns with its EOS); every other added token at the mean of its text's pieces, taken before it is a token
    own = {END: tok.eos_token_id, BOS: tok.bos_token_id, PAD: tok.pad_token_id or tok.eos_token_id}
    pieces = {t: [own[t]] if own.get(t) is not None else tok(t, add_special_tokens=False)["input_ids"]
              for t in missing}
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    tok.pad_token, tok.bos_token, tok.eos_token = PAD, BOS, END
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
    init_from_pieces(model, {tok.convert_tokens_to_ids(t): ids for t, ids in pieces.items()})
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    return model, tok


def run(ctx) -> dict:
    from rewards.tasks import corpus

    m = ctx.config.model
    if m.path:
        ctx.log.info(f"[bootstrap] adopting {m.path}")
        model, tok = adopt_model(m.path, m.tokenizer, m.dtype)
        ctx.log.info(f"[bootstrap] {type(model).__name__}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
                     f"parameters, vocabulary {len(tok)} (chat tokens added), {m.dtype}")
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
