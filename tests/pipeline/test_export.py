"""`pipeline export`: a run's stage as a Hugging Face folder (round trip through from_pretrained, the chat template
renders every mode, the model card says how it was trained and evaluated) or as an MXFP4 checkpoint."""
import json
import shutil

import pytest
import yaml

from pipeline.export import export_stage
from pipeline.recipe import Recipe

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]


@pytest.fixture
def run_dir(tmp_path, tiny_dir):
    rd = tmp_path / "run"
    recipe = Recipe(name="exp", domains=["math"], sft={"steps": 3})
    rd.mkdir()
    (rd / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    for sid, kind in (("bootstrap", "bootstrap"), ("sft.math", "sft")):
        shutil.copytree(tiny_dir, rd / sid / "final")
        (rd / sid / "manifest.json").write_text(json.dumps({"id": sid, "kind": kind, "status": "complete",
                                                            "metrics": {"final_loss": 1.25}, "wall_s": 3.0}))
    (rd / "eval").mkdir()
    (rd / "eval" / "results.json").write_text(json.dumps(
        [{"model": "sft.math", "domain": "math", "mode": "think_max", "metric": "reward_mean", "value": 0.75, "n": 4},
         {"model": "bootstrap", "domain": "math", "mode": "think_max", "metric": "reward_mean", "value": 0.1, "n": 4}]))
    return rd


def test_export_hf_round_trip(run_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_stage(run_dir, "sft.math", "hf", tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ref = AutoModelForCausalLM.from_pretrained(run_dir / "sft.math" / "final")
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k

    def render(mode):
        return tok.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True, mode=mode)

    assert render("non_think").endswith("<|assistant|></think>")
    assert render("think_high").endswith("<|assistant|><think>") and "Reasoning Effort" not in render("think_high")
    tm = render("think_max")
    assert tm.endswith("<|assistant|><think>") and tm.startswith("<|bos|><|system|>Reasoning Effort:")
    assert "Be brief." in tm
    ids = tok.apply_chat_template(MSGS, add_generation_prompt=True, mode="think_max", return_dict=True,
                                  return_tensors="pt")
    assert model(**ids).logits.shape[1] == ids["input_ids"].shape[1]

    card = (out / "README.md").read_text()
    assert "Stage chain (run order): `bootstrap` → `sft.math`" in card
    assert "final_loss=1.25" in card and "steps: 3" in card
    assert "| sft.math | math | think_max | 4 | 0.750 |" in card and "| bootstrap |" not in card


def test_export_mxfp4(run_dir, tmp_path):
    out = export_stage(run_dir, "sft.math", "mxfp4", tmp_path / "fp4")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["format"] == "mxfp4-pack-quantized"
    assert (out / "tokenizer.json").exists() and "format `mxfp4`" in (out / "README.md").read_text()


def test_export_unknown_stage(run_dir, tmp_path):
    from core.rundir import RunDirError

    with pytest.raises(RunDirError, match="stages with one: bootstrap, sft.math"):
        export_stage(run_dir, "distill", "hf", tmp_path / "x")
