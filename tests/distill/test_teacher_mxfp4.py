"""Teachers served as they were trained (issue 24): a teacher whose stage trained with ``qat: mxfp4`` computes with
the MXFP4-dequantized weights its learner's QAT forward used and the fleet serves; others as stored.

Before: every teacher was loaded as stored (full precision), so its logits were those of a model no stage trained
or served (``test_mxfp4_teacher_*`` fail there: ``TeacherWorker`` took no ``qat``; ``teacher_qat`` did not exist).
"""
from types import SimpleNamespace

import pytest
import torch

from distill.teachers import TeacherPool, TeacherWorker

SEQS = [[5, 17, 33, 2, 91, 140, 7, 66, 12], [3, 250, 8, 19, 77]]
POS = [[2, 5, 8], [0, 4]]


def _reference_logits(folder, how: str) -> list[torch.Tensor]:
    from transformers import AutoModelForCausalLM

    from rollout.fp4 import enable_qat, quantized_state_dict

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if how == "qat":                   # the learner's forward under qat: mxfp4 (fake-quant parametrization)
        enable_qat(model)
    elif how == "served":              # the weights the fleet serves: quantized_state_dict (rollout_state_dict)
        model.load_state_dict(quantized_state_dict(model), strict=False)
    out = []
    with torch.no_grad():
        for s, p in zip(SEQS, POS):
            logits = model(input_ids=torch.tensor([s])).logits[0]
            out.append(logits[torch.tensor(p)])
    return out


def test_mxfp4_teacher_logits_are_the_served_models(tiny_dir):
    fp4 = TeacherWorker(tiny_dir, qat="mxfp4").forward(SEQS, POS, payload="logits")
    plain = TeacherWorker(tiny_dir).forward(SEQS, POS, payload="logits")
    qat, served, stored = (_reference_logits(tiny_dir, h) for h in ("qat", "served", "stored"))
    for a, q, s, b, p in zip(fp4, qat, served, stored, plain):
        torch.testing.assert_close(a, q, rtol=0, atol=1e-5)     # = the learner's QAT forward
        torch.testing.assert_close(a, s, rtol=0, atol=1e-5)     # = the MXFP4-dequantized weights the engine serves
        torch.testing.assert_close(p, b, rtol=0, atol=1e-5)     # no QAT: as stored
        assert (a - p).abs().max() > 1e-3                       # and the two differ on the tiny model


def test_mxfp4_teacher_head_is_unchanged(tiny_dir):
    # the output head is no MXFP4 target: the learner recomputes teacher logits from it and the hidden states
    torch.testing.assert_close(TeacherWorker(tiny_dir, qat="mxfp4").head(), TeacherWorker(tiny_dir).head())


def test_pool_starts_each_teacher_with_its_qat(tiny_dir):
    from distill.routing import Teacher

    calls = []

    class _Cls:
        @staticmethod
        def remote(*args, **kw):
            calls.append(kw.get("qat", "none"))
            return SimpleNamespace(load=SimpleNamespace(remote=lambda: 1))

    pool = TeacherPool({"a": Teacher("a", tiny_dir), "b": Teacher("b", tiny_dir)}, budget_gb=4,
                       qat={"a": "mxfp4"})
    pool.remote_cls, pool.ray = _Cls, SimpleNamespace(get=lambda refs: refs, kill=lambda a: None)
    pool._start(["a", "b"])
    assert calls == ["mxfp4", "none"]


@pytest.mark.parametrize("qat, expect", [("mxfp4", "mxfp4"), ("none", None)])
def test_distill_resolves_teacher_qat_from_the_teacher_stages(qat, expect):
    from pipeline.recipe import load_with_graph

    _, graph = load_with_graph("recipes/think_max.yaml", [f"learner.qat={qat}"], check=False)
    spec = next(s for s in graph if s.kind == "distill")
    names = {t.name for refs in spec.config.teachers.values() for t in refs}
    assert names and spec.config.teacher_qat == ({n: expect for n in names} if expect else {})
