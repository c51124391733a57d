"""The identity rule field by field: a field is in a stage's hash exactly when it can change what the stage computes.

The list of operational fields is the one docs/recipe.md's table is generated from (``pipeline.docgen.identity_rows``,
read off the ``operational(...)`` declarations): each is changed alone, to a valid other value, on the full graph
(recipes/ablations.yaml: think_max plus the controls) and no stage's hash or fingerprint moves -- so a finished run
re-runs nothing. The fleet's identity fields move every stage that samples with the fleet and nothing else; the
learner's world size moves training stages; fields that cannot act are refused with one line."""
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.docgen import IDENTITY, OPERATIONAL, identity_rows
from pipeline.graph import build_graph, config_hash, fingerprints
from pipeline.recipe import Recipe, RecipeError, load_recipe, read_recipe_data

ROOT = Path(__file__).resolve().parents[2]
ABLATIONS, THINK_MAX = ROOT / "recipes" / "ablations.yaml", ROOT / "recipes" / "think_max.yaml"
ROWS = identity_rows()
# a section that must exist before one of its fields can be set alone (required fields of its own)
PARENTS = {"model.size": {"params_b": 0.001, "hidden_size": 64, "num_layers": 1, "vocab_size": 400}}   # ~ tiny
PREFERRED = {"fleet.dtype": ["bfloat16"]}   # unset is float32 on CPU: the other dtype


def _is_leaf(row) -> bool:
    return not any(r["key"].startswith(row["key"] + ".") for r in ROWS)


OPERATIONAL_LEAVES = [r for r in ROWS if r["status"] == OPERATIONAL and _is_leaf(r)]


def _get(data: dict, key: str):
    node = data
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _set(data: dict, key: str, value) -> None:
    *path, last = key.split(".")
    node = data
    for p in path:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[last] = value


def _candidates(row, current) -> list:
    """Values of the field's type other than ``current``, most likely valid first."""
    f = row["cls"].model_fields[row["name"]]
    current = f.get_default(call_default_factory=True) if current is None and not f.is_required() else current
    out: list = []
    args = typing.get_args(f.annotation) if typing.get_origin(f.annotation) in (typing.Union, __import__(
        "types").UnionType) else (f.annotation,)
    for t in args:
        origin = typing.get_origin(t)
        if t is bool:
            out.append(not current)
        elif origin is typing.Literal:
            out += [a for a in typing.get_args(t) if a != current]
        elif t is int:
            out += [(current or 0) + 1, 1, 2, 3, 64, 1024]
        elif t is float:
            out += [(current or 0.5) * 2, 1.0, 0.5, 0.25]
        elif t is str:
            out += ["auto", "x"]
        elif origin is dict or t is dict:
            out += [{"node:x": 1.0}]
        elif t is type(None):
            out.append(None)
    return [v for v in out if v != current]


def _changed_recipe(data: dict, key: str, row) -> tuple[Recipe, object, dict]:
    """``data`` with ``key`` set to the first valid other value: (recipe, value, that data); fails naming the key if
    none is."""
    import copy

    errors = []
    for parent, value in PARENTS.items():
        if key.startswith(parent + ".") and _get(data, parent) is None:
            data = copy.deepcopy(data)
            _set(data, parent, dict(value))
    for v in PREFERRED.get(key, []) + _candidates(row, _get(data, key)):
        d = copy.deepcopy(data)
        _set(d, key, v)
        try:
            return Recipe.model_validate(d), v, d
        except ValidationError as e:
            errors.append(f"{v!r}: {str(e).splitlines()[-1]}")
    pytest.fail(f"{key}: no valid changed value to test it with (tried {errors}); add one to the test")


def _state(recipe) -> tuple[dict, dict]:
    g = build_graph(recipe, check=False)
    return {s.id: config_hash(s) for s in g}, fingerprints(g, {s.id: "out" for s in g})


@pytest.fixture(scope="module")
def base():
    data = read_recipe_data(ABLATIONS)
    data["fleet"]["dtype"] = "float32"      # pinned: fleet.resources.num_gpus then changes nothing (dtype resolved)
    return data, _state(Recipe.model_validate(data))


def test_the_table_covers_the_recipe_and_names_the_operational_fields():
    keys = {r["key"]: r["status"] for r in ROWS}
    for k in ("sft.save_every", "grpo.save_every", "sft.keep_checkpoints", "distill.resources.num_gpus",
              "grpo.placement.strategy", "logging.tensorboard", "fleet.kv_cache_gb", "fleet.engines"):
        assert keys[k] == OPERATIONAL, k
    for k in ("fleet.dtype", "fleet.max_model_len", "fleet.max_logprobs", "fleet.return_routed_experts",
              "fleet.tensor_parallel_size", "fleet.fp4", "learner.ranks", "grpo.engine.max_batch", "sft.steps"):
        assert keys[k] == IDENTITY, k
    assert len(OPERATIONAL_LEAVES) >= 40
    text = (ROOT / "docs" / "recipe.md").read_text()
    assert "| `fleet.dtype` | **identity** |" in text and "| `sft.save_every` | *operational* |" in text


@pytest.mark.parametrize("row", OPERATIONAL_LEAVES, ids=[r["key"] for r in OPERATIONAL_LEAVES])
def test_changing_an_operational_field_moves_no_stage(base, row):
    data, (hashes, fps) = base
    key = row["key"].replace("<domain>", "math").replace("<mode>", "think_max")
    assert "<" not in key and "[]" not in key, f"{row['key']}: give the test a key to set it under"
    recipe, value, _ = _changed_recipe(data, key, row)
    h, fp = _state(recipe)
    assert {k for k in hashes if h.get(k) != hashes[k]} == set(), f"{key}={value!r}"
    assert h.keys() == hashes.keys() and fp == fps, f"{key}={value!r}"


@pytest.mark.parametrize("section,over", [("sft", "per_domain"), ("grpo", "per_domain"), ("grpo", "per_mode")])
def test_an_operational_field_in_a_per_domain_or_per_mode_override_moves_no_stage(base, section, over):
    data, (hashes, _) = base
    which = "math" if over == "per_domain" else "think_max"
    rows = [r for r in OPERATIONAL_LEAVES if r["key"].startswith(section + ".") and r["key"].count(".") <= 2]
    assert rows
    for row in rows:
        rest = row["key"][len(section) + 1:]
        recipe, value, _ = _changed_recipe(data, f"{section}.{over}.{which}.{rest}", row)
        h, _ = _state(recipe)
        assert h == hashes, f"{section}.{over}.{which}.{rest}={value!r}"


FLEET_IDENTITY = [r for r in ROWS if r["key"].startswith("fleet.") and r["status"] == IDENTITY and _is_leaf(r)]


@pytest.mark.parametrize("row", FLEET_IDENTITY, ids=[r["key"] for r in FLEET_IDENTITY])
def test_a_fleet_field_that_shapes_samples_moves_every_sampling_stage_only(row):
    """think_max samples with the fleet in GRPO, distill and the eval stage (eval.engine vllm); the SFT stages, the
    base and the generalist do not (their own held-out rows carry the fleet in their spec instead)."""
    data = read_recipe_data(THINK_MAX)
    before = Recipe.model_validate(data)
    after, value, _ = _changed_recipe(data, row["key"], row)
    g0, g1 = build_graph(before, check=False), build_graph(after, check=False)
    h0, h1 = {s.id: config_hash(s) for s in g0}, {s.id: config_hash(s) for s in g1}
    sampling = {s.id for s in g0 if s.kind in ("grpo", "distill", "eval")}
    assert len(sampling) == 14
    assert {k for k in h0 if h0[k] != h1[k]} == sampling, f"{row['key']}={value!r}"
    sft0, sft1 = (next(s for s in g if s.id == "sft.math").config.heldout for g in (g0, g1))
    assert sft0.cell_key("math", "think_max") != sft1.cell_key("math", "think_max")   # its rows are recomputed


def test_the_fleet_dtype_is_identity_resolved():
    """Unset, the fleet runs bfloat16 on GPU and float32 on CPU: its GPUs then change the samples; set, they do not."""
    def hashes(*sets):
        return {s.id: config_hash(s) for s in build_graph(load_recipe(THINK_MAX, list(sets), check=False), check=False)}

    cpu, gpu = hashes(), hashes("fleet.resources.num_gpus=1")
    assert {k for k in cpu if cpu[k] != gpu[k]} == {k for k in cpu if k.startswith(("grpo.", "distill", "eval"))}
    assert hashes("fleet.resources.num_gpus=1", "fleet.dtype=bfloat16") == gpu
    assert hashes("fleet.dtype=float32") == cpu


def test_the_learner_world_size_is_identity_of_training_stages():
    def hashes(*sets):
        return {s.id: config_hash(s) for s in build_graph(load_recipe(THINK_MAX, list(sets), check=False), check=False)}

    base = hashes()
    sft = {k for k in base if k.startswith("sft.")}
    assert hashes("sft.resources.num_gpus=1") == base                     # one GPU: one rank, as on CPU
    two = hashes("sft.resources.num_gpus=2")                               # two ranks
    assert {k for k in base if base[k] != two[k]} == sft
    assert hashes("sft.resources.num_gpus=2", "sft.resources.num_cpus=2") == two
    assert {k for k in base if base[k] != hashes("eval.resources.num_gpus=2")[k]} == set()   # eval trains nothing
    # distill: split gives the teachers GPUs of the learner's; with 4 GPUs, 3 ranks instead of 4
    col, split = hashes("distill.resources.num_gpus=4"), hashes("distill.resources.num_gpus=4",
                                                                "distill.placement.strategy=split")
    assert col["distill"] != base["distill"] and split["distill"] != col["distill"]
    assert hashes("distill.resources.num_gpus=4", "distill.placement.strategy=split",
                  "distill.placement.teacher_gpus=1") == split           # the default for 4: one teacher GPU
    # GRPO has no teachers: its placement sets nothing
    assert hashes("grpo.resources.num_gpus=4", "grpo.placement.strategy=split") == hashes("grpo.resources.num_gpus=4")


@pytest.mark.parametrize("sets,message", [
    (["grpo.engine.max_batch=64"], "grpo.engine: max_batch: has no effect with kind vllm"),
    (["grpo.per_domain.math.engine={kind: vllm, fp4: true, max_batch: 64}"], "max_batch: has no effect with kind vllm"),
    (["eval.engine.max_batch=64"], "eval.engine: max_batch: has no effect with kind vllm"),
    (["model.dtype=bfloat16"], "model: dtype: bfloat16 has no effect on the embedded tiny model"),
    (["model.tokenizer=/tmp/tok"], "model: tokenizer: has no effect on the embedded tiny model"),
])
def test_a_field_that_cannot_act_is_refused_in_one_line(sets, message):
    with pytest.raises(RecipeError, match=message) as e:
        load_recipe(THINK_MAX, sets, check=False)
    assert "\n" not in str(e.value)


def test_where_those_fields_act_they_are_identity():
    base = {s.id: config_hash(s) for s in build_graph(load_recipe(THINK_MAX, ["grpo.engine.kind=hf"], check=False),
                                                       check=False)}
    batch = {s.id: config_hash(s) for s in build_graph(load_recipe(
        THINK_MAX, ["grpo.engine.kind=hf", "grpo.engine.max_batch=64"], check=False), check=False)}
    assert {k for k in base if base[k] != batch[k]} == {k for k in base if k.startswith("grpo.")}
    m = load_recipe(THINK_MAX, ["model.path=/nowhere/model", "model.dtype=bfloat16"], check=False).model
    assert m.dtype == "bfloat16"


# what a real run on this machine cannot be given (no GPUs, no cluster to join, no W&B): the hash-level test above
# covers these
NOT_RUNNABLE = ("ray.address", ".num_gpus", ".custom", "logging.wandb", "placement.teacher_gpus")


@pytest.mark.slow
def test_a_finished_run_with_every_operational_field_changed_reruns_nothing(tmp_path):
    """A finished tiny run (bootstrap, two SFT specialists, the eval stage), run again with every operational field of
    its sections changed at once: every stage is up to date, nothing re-runs."""
    import json

    import yaml
    from conftest import run_cli, tiny_recipe

    recipe = tiny_recipe(tmp_path, eval={"samples": 2, "pass_k": [1, 2],
                                         "max_tokens": {m: 8 for m in ("non_think", "think_high", "think_max")}})
    run_dir = tmp_path / "run"
    r = run_cli("run", recipe, "--run-dir", run_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = yaml.safe_load(recipe.read_text())
    changed = []
    for row in OPERATIONAL_LEAVES:
        key = row["key"]
        if key.split(".")[0] not in data and key.split(".")[0] not in ("ray", "logging", "model", "bootstrap",
                                                                        "name", "sandbox", "keep_outputs"):
            continue                                   # a section this recipe does not have
        if any(n in key for n in NOT_RUNNABLE) or "<" in key:
            continue
        _, value, data = _changed_recipe(data, key, row)
        changed.append(f"{key}={value!r}")
    assert len(changed) >= 10, changed
    other = tmp_path / "changed.yaml"
    other.write_text(yaml.safe_dump(data))
    r = run_cli("run", other, "--run-dir", run_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("up to date, skipped") == 4 and "[start]" not in r.stdout, (changed, r.stdout[-2000:])
    assert json.loads((run_dir / "eval" / "manifest.json").read_text())["status"] == "complete"
