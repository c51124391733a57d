"""A tiny model + tokenizer built offline, shared by unit tests (module-level cache)."""
from functools import lru_cache


@lru_cache(maxsize=None)
def tiny_model_dir(tmp_root: str, vocab: int = 400, hidden: int = 64, layers: int = 1) -> str:
    from pathlib import Path

    from train.bootstrap import tiny_model, train_tokenizer
    from train.config import TinyModel
    from rewards.tasks import corpus

    out = Path(tmp_root) / f"tiny-{vocab}-{hidden}-{layers}"
    if not (out / "config.json").exists():
        tok = train_tokenizer(corpus(0, 40), vocab)
        cfg = TinyModel(vocab_size=vocab, hidden_size=hidden, intermediate_size=128, moe_intermediate_size=64,
                        num_hidden_layers=layers)
        model = tiny_model(cfg, tok, seed=0)
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
    return str(out)
