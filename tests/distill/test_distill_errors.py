"""A missing teacher, or one with another vocabulary, is a one-line error before any work: recipe and stage level."""
import shutil
from pathlib import Path

import pytest

from distill.routing import Teacher
from distill.teachers import check_teachers
from pipeline.recipe import RecipeError, load_recipe

from conftest import tiny_recipe


@pytest.fixture(scope="module")
def other_vocab(tmp_path_factory):
    """A tiny model whose tokenizer and vocab_size differ from ``tiny_dir``'s."""
    from helpers_tiny import tiny_model_dir

    return tiny_model_dir(str(tmp_path_factory.mktemp("other")), vocab=320)


def test_check_teachers(tiny_dir, other_vocab, tmp_path):
    ok = Teacher("sft.math", tiny_dir)
    check_teachers({"math.think_max": [(ok, 1.0)]}, tiny_dir)
    cases = [(Teacher("sft.math", str(tmp_path / "nope")), "no such checkpoint folder"),
             (Teacher("other", other_vocab), "vocabulary mismatch: teacher vocab_size 320")]
    empty = tmp_path / "empty"
    shutil.copytree(tiny_dir, empty, ignore=shutil.ignore_patterns("*.safetensors"))
    cases.append((Teacher("empty", str(empty)), "holds no weights"))
    retok = tmp_path / "retok"                         # same vocab_size, different tokenizer
    shutil.copytree(tiny_dir, retok)
    shutil.copy(Path(other_vocab) / "tokenizer.json", retok / "tokenizer.json")
    cases.append((Teacher("retok", str(retok)), "the teacher's tokenizer differs"))
    for teacher, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            check_teachers({"math.think_max": [(ok, 1.0)], "code.non_think": [(teacher, 1.0)]}, tiny_dir)
        assert str(e.value).startswith(f"distill.teachers.code.non_think: teacher {teacher.name}: ")
        assert "\n" not in str(e.value)


def test_recipe_level_teacher_path_errors(tmp_path, tiny_dir, other_vocab):
    def load(**over):
        return load_recipe(tiny_recipe(tmp_path, domains=["math"], tasks={"math": {"n_train": 8}}, **over))

    with pytest.raises(RecipeError, match=r"distill\.teachers\.math\.think_max: no such teacher folder"):
        load(distill={"teachers": {"math.think_max": [{"path": str(tmp_path / "missing")}]}})
    (tmp_path / "notmodel").mkdir()
    with pytest.raises(RecipeError, match=r"distill\.teachers\.math\.think_max: .* has no config.json"):
        load(distill={"teachers": {"math.think_max": [{"path": str(tmp_path / "notmodel")}]}})
    # a real student model: its tokenizer and the teacher's must agree
    with pytest.raises(RecipeError, match=r"distill\.teachers\.math\.non_think: vocabulary mismatch"):
        load(model={"path": tiny_dir}, distill={"teachers": {"math.non_think": [{"path": other_vocab}]}})
    load(model={"path": tiny_dir}, distill={"teachers": {"math.non_think": [{"path": tiny_dir}]}})
    # the embedded student: a teacher with more token ids than model.tiny.vocab_size cannot share its vocabulary
    with pytest.raises(RecipeError, match=r"distill\.teachers\.math\.non_think: vocabulary mismatch"):
        load(model={"tiny": {"vocab_size": 300}}, distill={"teachers": {"math.non_think": [{"path": tiny_dir}]}})


def test_stage_fails_before_any_work(tmp_path, tiny_dir, other_vocab):
    from core.context import StageContext
    from distill.stage import run
    from pipeline.graph import build_graph

    recipe = load_recipe(tiny_recipe(tmp_path, domains=["math"], tasks={"math": {"n_train": 8}}, distill={}))
    spec = next(s for s in build_graph(recipe) if s.id == "distill")
    for teacher_dir, msg in ((other_vocab, "vocabulary mismatch"), (str(tmp_path / "gone"), "no such checkpoint")):
        d = tmp_path / f"distill-{Path(teacher_dir).name}"
        ctx = StageContext(stage_id="distill", kind="distill", dir=d, config=spec.config,
                           deps={"bootstrap": Path(tiny_dir), "sft.math": Path(teacher_dir)}, seed=recipe.seed)
        with pytest.raises(ValueError, match=rf"distill\.teachers\.math\.\w+: teacher sft\.math: {msg}"):
            run(ctx)
        assert not (d / "ckpt").exists() and not ctx.metrics.rows() and not (d / "final").exists()
