"""Stage identity: a stage's hash covers its fully resolved config (including what it inherits from other sections)
and the content of the files it reads, and nothing operational; every recipe passes every stage's run-time checks
at validation."""
from pathlib import Path

import pytest
import yaml

from core.registry import STAGE_KINDS
from pipeline.graph import build_graph, config_hash, fingerprints
from pipeline.recipe import Recipe, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def _load(path, sets=()):
    """The recipe with ``--set`` overrides, or with ``sets`` a function editing its YAML data."""
    if callable(sets):
        data = yaml.safe_load(Path(path).read_text())
        sets(data)
        return Recipe.model_validate(data)
    return load_recipe(path, list(sets), check=False)


def _hashes(path, *sets):
    return {s.id: config_hash(s) for s in build_graph(_load(path, sets), check=False)}


def _changed(a: dict, b: dict) -> set:
    return {k for k in a if a[k] != b.get(k)}


THINK_MAX = ROOT / "recipes" / "think_max.yaml"


@pytest.mark.parametrize("sets", [
    ("sft.save_every=7", "grpo.save_every=3", "sft.keep_checkpoints=3", "distill.save_every=9"),
    ("sft.resources.num_cpus=2", "grpo.resources.num_gpus=0", "eval.resources.num_cpus=1"),
    ("grpo.placement.strategy=split", "distill.teacher_memory_gb=2", "grpo.placement.teacher_gpus=1"),
    ("logging.tensorboard=true", "ray.num_cpus=1", "generalist.save_every=11", "base.save_every=13"),
    ("eval.samples=4", "eval.greedy=false"),      # held-out settings: rows carry their spec, stages are not re-run
])
def test_operational_changes_rerun_nothing_but_eval(sets):
    before, after = _hashes(THINK_MAX), _hashes(THINK_MAX, *sets)
    changed = _changed(before, after)
    assert changed <= {"eval"}, changed
    if not any(s.startswith("eval.samples") for s in sets):
        assert not changed


@pytest.mark.parametrize("sets,first", [
    (("sft.per_domain.math.steps=301",), {"sft.math", "generalist"}),   # its budget: the specialists' together
    (("learner.lr=0.02",), {"base", "sft.math", "sft.code", "sft.agent", "sft.instruct", "generalist"}),
    (("grpo.per_mode.think_max.entropy_coef=-0.3",), {f"grpo.{d}.think_max" for d in
                                                       ("math", "code", "agent", "instruct")}),
    (("tasks.math.n_train=1400",), {"base", "sft.math", "generalist", "distill"} | {
        f"grpo.math.{m}" for m in ("non_think", "think_high", "think_max")}),
    (lambda d: d["distill"].update({"mixture": {"math.non_think": 2}}), {"distill"}),   # generalist: repeats pinned
    (lambda d: (d["generalist"].pop("repeats"), d["distill"].update({"mixture": {"math.non_think": 2,
                                                                                 "code.non_think": 1}})),
     {"generalist", "distill"}),                                             # repeats follow the mixture
    (("base.repeats.instruct=2",), {"base"}),                              # everything downstream re-runs
    (("grpo.shaping.modes.think_max.l_max=200",), {f"grpo.{d}.think_max" for d in
                                                    ("math", "code", "agent", "instruct")}),   # eval sets its own
    (("sft.batch_size=8",), {"base", "sft.math", "sft.code", "sft.agent", "sft.instruct", "generalist"}),
])
def test_output_changing_changes_rerun_the_stage_and_downstream(sets, first):
    """What a stage reads indirectly counts: the base and the generalist inherit sft.batch_size, the generalist the
    distill mixture (unless its repeats are set), distill and eval the GRPO budgets. Downstream stages follow through the fingerprint chain."""
    before_r = load_recipe(THINK_MAX, check=False)
    after_r = _load(THINK_MAX, sets)
    g0, g1 = build_graph(before_r, check=False), build_graph(after_r, check=False)
    h0, h1 = {s.id: config_hash(s) for s in g0}, {s.id: config_hash(s) for s in g1}
    assert _changed(h0, h1) == first
    fp0, fp1 = fingerprints(g0, {s.id: "out" for s in g0}), fingerprints(g1, {s.id: "out" for s in g1})
    downstream = set()
    for s in g1:                                   # everything that depends on a changed stage re-runs too
        if s.id in first or any(d in downstream for d in s.deps):
            downstream.add(s.id)
    assert _changed(fp0, fp1) == downstream


def test_input_file_content_is_part_of_identity(tmp_path):
    data = tmp_path / "math.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "domains": ["math"], "tasks": {"math": {
        "source": "json", "data_files": str(data)}}}))
    a = _hashes(recipe)
    data.write_text('{"prompt": "1+2", "answer": "3"}\n')          # same path, other content
    b = _hashes(recipe)
    assert _changed(a, b) == {"sft.math"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_passes_every_run_time_check(path):
    """What a stage checks of its config before any work (``StageKind.check``, called by the runner at stage
    start) is exactly what `pipeline validate` runs: here every recipe in recipes/ through every one of them."""
    recipe = load_recipe(path, check=False)
    graph = build_graph(recipe, check=False)
    assert graph
    for spec in graph:
        STAGE_KINDS[spec.kind].check(spec)


def test_a_run_time_refusal_is_a_validation_error(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"name": "r", "domains": ["math"], "grpo": {"advantage": "nope"}}))
    with pytest.raises(RecipeError, match="grpo.advantage: unknown 'nope'"):
        load_recipe(r)
    r.write_text(yaml.safe_dump({"name": "r", "domains": ["math"], "eval": {"samples": 2, "pass_k": [4]}}))
    with pytest.raises(RecipeError, match="eval.pass_k: pass@4 needs at least 4 samples"):
        load_recipe(r)


def test_ablations_keep_every_think_max_stage_and_add_the_controls():
    """recipes/ablations.yaml extends think_max: run into the same run directory, it re-runs nothing of think_max
    (every shared stage has the same hash) but the eval stage, which now also covers the controls."""
    base, abl = _hashes(THINK_MAX), _hashes(ROOT / "recipes" / "ablations.yaml")
    shared = set(base) - {"eval"}
    assert {k for k in shared if base[k] != abl.get(k)} == set()
    added = set(abl) - set(base)
    assert "control.seqkd" in added
    assert {k for k in added if k.startswith("control.entropy.")} == {
        f"control.entropy.{s[len('grpo.'):]}" for s in base if s.startswith("grpo.")}
    graph = {s.id: s for s in build_graph(load_recipe(ROOT / "recipes" / "ablations.yaml", check=False), check=False)}
    assert added <= set(graph["eval"].deps) and "bootstrap" not in graph["eval"].deps


def test_extends_merges_mappings_and_refuses_bad_bases(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nseed: 3\nsft: {steps: 5, batch_size: 4}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nsft: {steps: 7}\n")
    r = load_recipe(tmp_path / "child.yaml", check=False)
    assert (r.name, r.seed, r.sft.steps, r.sft.batch_size) == ("base", 3, 7, 4)
    (tmp_path / "loop.yaml").write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(RecipeError, match="extends itself"):
        load_recipe(tmp_path / "loop.yaml", check=False)
    (tmp_path / "orphan.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(RecipeError, match=r"orphan.yaml: extends: no such recipe file 'nowhere.yaml'"):
        load_recipe(tmp_path / "orphan.yaml", check=False)
    (tmp_path / "typo.yaml").write_text("extends: base.yaml\nsft: {stepz: 7}\n")
    with pytest.raises(RecipeError, match="unknown key 'sft.stepz'"):
        load_recipe(tmp_path / "typo.yaml", check=False)


def test_eval_exclude_names_a_stage():
    with pytest.raises(RecipeError, match="eval.exclude: no stage 'bootstrapp'"):
        build_graph(load_recipe(THINK_MAX, ["eval.exclude=[bootstrapp]"], check=False), check=False)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_the_recipe_a_run_writes_reads_back_to_the_same_stages(path):
    """run_dir/recipe.yaml (the resolved recipe, every default written out) is read back by `pipeline export`, the
    report and the efficacy table: it must validate and give the same stage hashes (a `bfcl: null` suite read back
    as `bfcl:` -- on -- and a dumped `source: bfcl` task failed its own validation)."""
    r = load_recipe(path, check=False)
    back = Recipe.model_validate(yaml.safe_load(yaml.safe_dump(r.model_dump(mode="json"), sort_keys=False)))
    assert {s.id: config_hash(s) for s in build_graph(back, check=False)} == \
        {s.id: config_hash(s) for s in build_graph(r, check=False)}
    assert back.eval.suites.names() == r.eval.suites.names()
