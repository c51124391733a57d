"""``tasks.<domain>.source`` as a list of the domain's packaged sources: the one-line refusals, the interleaved
load (unique ids, each row's own origin), `pipeline validate` on such a recipe, and a single-name source's hash and
dump left as they were."""
import importlib.util
import sys
import types

import pytest
import yaml

import rewards.tasks.rows as rows
import train.suites as suites
from pipeline.recipe import Recipe, RecipeError, load_recipe
from rewards.tasks import load_tasks

HAVE_BFCL = importlib.util.find_spec("bfcl_eval") is not None
BFCL_OPTS = {"categories": ["simple_python"], "max_chars": 1200}


def _rows(name: str, ids: list[str]) -> list[dict]:
    return [{"id": i, "domain": "agent", "prompt": f"{name} {i}",
             "origin": {"source": f"{name}:part", "row": k, "format": "messages", "sft_modes": "all"}}
            for k, i in enumerate(ids)]


@pytest.fixture
def fake(monkeypatch):
    """Packaged agent sources ``fa`` (4 rows) and ``fb`` (2 rows, one id shared with fa), and ``fake``: BFCL's
    ``multiple`` rows under their own ids and origin. Returns the calls each loader got."""
    calls = []
    mod = types.ModuleType("fake_packaged_sources")

    def loader(name, ids):
        def load(domain, split, n, source):
            calls.append((name, domain, split, n, dict(source)))
            return _rows(name, ids)[:n]
        return load

    def load_fake(domain, split, n, source):
        from rewards.tasks.bfcl import load_bfcl

        calls.append(("fake", domain, split, n, dict(source)))
        got = load_bfcl(domain, split, n, {**source, "source": "bfcl", "bfcl": {"categories": ["multiple"],
                                                                                 "max_chars": 1200}})
        return [{**r, "id": f"fake/{r['id']}", "origin": {**r["origin"], "source": "fake"}} for r in got]

    mod.load_fa, mod.load_fb, mod.load_fake = loader("fa", ["a0", "same", "a2", "a3"]), loader("fb", ["same", "b1"]), \
        load_fake
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    for name in ("fa", "fb", "fake"):
        monkeypatch.setitem(rows.PACKAGED_LOADERS, name, f"{mod.__name__}:load_{name}")
        monkeypatch.setitem(suites.PACKAGED_SOURCES, name, ("agent", "messages", None))
        monkeypatch.setitem(suites.PACKAGES, name, ("json", "nothing to install"))
    return calls


def _write(tmp_path, tasks: dict, domains=("agent",)):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump({"name": "mix", "domains": list(domains), "modes": ["non_think"], "tasks": tasks}))
    return f


# ------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("tasks, message", [
    ({"agent": {"source": ["bfcl"]}}, "tasks.agent.source: a list names 2 or more packaged sources"),
    ({"agent": {"source": []}}, "tasks.agent.source: a list names 2 or more packaged sources"),
    ({"agent": {"source": ["bfcl", "fake", "bfcl"]}}, "tasks.agent.source: bfcl is listed twice"),
    ({"agent": {"source": ["bfcl", "json"]}}, "tasks.agent.source: 'json' is not a packaged source"),
    ({"agent": {"source": ["generated", "bfcl"]}}, "tasks.agent.source: 'generated' is not a packaged source"),
    ({"agent": {"source": ["bfcl", "reasoning_gym"]}}, "tasks.agent.source: a list's sources give rows of one "
                                                       "domain: bfcl gives agent, reasoning_gym gives math"),
    ({"math": {"source": ["bfcl", "fake"]}}, "tasks: math.source: bfcl gives rows of the agent domain, not math"),
    ({"agent": {"source": ["bfcl", "fake"], "reasoning_gym": {}}},
     "tasks.agent: reasoning_gym: options of source: reasoning_gym (source is [bfcl, fake])"),
    ({"agent": {"source": ["bfcl", "fake"], "fields": {"prompt": "q"}}},
     "tasks.agent: fields: does not apply to source [bfcl, fake]"),
    ({"agent": {"source": ["bfcl", "fake"], "format": "prompt_only"}},
     "tasks.agent: format: source bfcl gives messages rows, not prompt_only"),
])
def test_a_bad_source_list_is_one_line_naming_the_field(tmp_path, fake, tasks, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, tasks, domains=("agent", "math")))
    assert "\n" not in str(e.value) and message in str(e.value), str(e.value)


def test_each_listed_source_needs_its_package(tmp_path, fake, monkeypatch):
    monkeypatch.setitem(suites.PACKAGES, "fake", ("no_such_package_xyz", "pip install no-such-package-xyz"))
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, {"agent": {"source": ["bfcl", "fake"]}}))
    assert "tasks: agent.source: fake: needs the no-such-package-xyz package" in str(e.value), str(e.value)


def test_a_list_takes_the_options_of_each_listed_source(tmp_path, fake):
    r = load_recipe(_write(tmp_path, {"agent": {"source": ["bfcl", "fake"], "bfcl": BFCL_OPTS, "sft_modes": "all"}}))
    ts = r.task_source("agent")
    assert ts.source == ["bfcl", "fake"] and ts.sources() == ["bfcl", "fake"] and ts.bfcl.max_chars == 1200
    assert Recipe(name="x").task_source("agent").sources() == ["generated"]


# ------------------------------------------------------------------------------------------------------ loading
def test_a_list_is_interleaved_with_unique_ids_and_each_rows_origin(fake):
    src = {"source": ["fa", "fb"], "sft_modes": "all", "n_train": 5}
    got = load_tasks("agent", "train", 5, 0, src)
    assert [r["prompt"] for r in got] == ["fa a0", "fb same", "fa same", "fb b1", "fa a2"]    # fb runs out: fa goes on
    assert [r["id"] for r in got] == ["a0", "fb:same", "fa:same", "b1", "a2"]   # only the shared id is prefixed
    assert [r["origin"]["source"] for r in got] == ["fa:part", "fb:part", "fa:part", "fb:part", "fa:part"]
    assert [(c[0], c[1], c[2], c[3], c[4]["source"]) for c in fake] == [("fa", "agent", "train", 5, "fa"),
                                                                        ("fb", "agent", "train", 5, "fb")]
    assert all({k: v for k, v in c[4].items() if k != "source"} == {k: v for k, v in src.items() if k != "source"}
               for c in fake)
    assert load_tasks("agent", "train", 5, 0, src) == got                                 # deterministic
    assert [r["id"] for r in load_tasks("agent", "train", 2, 0, src)] == ["a0", "same"]   # n cuts: nothing shared
    assert len(load_tasks("agent", "train", 100, 0, src)) == 6                            # every row of both


def test_a_list_source_names_each_row_with_its_own_source(fake, monkeypatch):
    monkeypatch.setitem(sys.modules["fake_packaged_sources"].__dict__, "load_fb",
                        lambda d, s, n, src: [{**r, "origin": {"row": 0}} for r in _rows("fb", ["b0"])])
    got = rows.load_rows("agent", "train", 3, {"source": ["fa", "fb"]})
    assert [r["origin"]["source"] for r in got] == ["fa:part", "fb", "fa:part"]
    assert rows.source_label({"source": ["fa", "fb"]}) == "[fa, fb]"
    assert rows.source_label({"source": "json", "data_files": "x.jsonl"}) == "json:x.jsonl"


def test_a_listed_loader_that_is_missing_is_one_line(fake, monkeypatch):
    monkeypatch.setitem(rows.PACKAGED_LOADERS, "fb", "no_such_module_xyz:load")
    with pytest.raises(rows.RowError, match="^tasks.agent: source fb: its loader no_such_module_xyz:load is not "
                                            "available"):
        rows.load_rows("agent", "train", 3, {"source": ["fa", "fb"]})


@pytest.mark.skipif(not HAVE_BFCL, reason="needs bfcl-eval")
def test_bfcl_and_another_source_interleave(fake):
    from rewards.tasks.bfcl import load_bfcl

    src = {"source": ["bfcl", "fake"], "bfcl": BFCL_OPTS, "sft_modes": "all"}
    got = load_tasks("agent", "train", 6, 0, src)
    alone = load_bfcl("agent", "train", 6, {**src, "source": "bfcl"})
    assert [r["origin"]["source"] for r in got] == ["bfcl:simple_python", "fake"] * 3
    assert got[0::2] == alone[:3]                              # bfcl's rows exactly as source: bfcl gives them
    assert len({r["id"] for r in got}) == 6 and all(r["id"].startswith("fake/") for r in got[1::2])


@pytest.mark.skipif(not HAVE_BFCL, reason="needs bfcl-eval")
def test_pipeline_validate_reads_a_list_source(tmp_path, fake, capsys):
    from conftest import tiny_recipe
    from pipeline.cli import main

    f = tiny_recipe(tmp_path, domains=["agent"], modes=["non_think"],
                    tasks={"agent": {"source": ["bfcl", "fake"], "bfcl": BFCL_OPTS, "sft_modes": "all",
                                     "n_train": 8, "n_eval": 2}})
    rc = main(["validate", str(f), "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "rows checked" in out and "bfcl_eval (bfcl)" in out, out
    assert {c[0] for c in fake} == {"fake"} and {c[2] for c in fake} == {"train", "test"}   # both splits read


# ------------------------------------------------------------------------------------------- a single name
def test_a_single_name_dumps_and_hashes_as_before(fake):
    """A string stays a string in the dump (run_dir/recipe.yaml) and in the stage identity, so a recipe's hashes
    survive the dump round trip; a list is another source: only its domain's stages hash otherwise."""
    from core.config import identity
    from pipeline.graph import build_graph, config_hash

    data = {"name": "one", "domains": ["agent", "math"], "modes": ["non_think"],
            "tasks": {"agent": {"source": "bfcl", "bfcl": BFCL_OPTS}}}
    r = Recipe.model_validate(data)
    dumped = r.model_dump(mode="json")
    assert dumped["tasks"]["agent"]["source"] == "bfcl" and "source: bfcl\n" in yaml.safe_dump(dumped)
    back = Recipe.model_validate(yaml.safe_load(yaml.safe_dump(dumped, sort_keys=False)))
    graph = build_graph(r, check=False)
    hashes = {s.id: config_hash(s) for s in graph}
    assert hashes == {s.id: config_hash(s) for s in build_graph(back, check=False)}
    sft = next(s for s in graph if s.id == "sft.agent")
    assert sft.inputs == ["bfcl"] and identity(sft.config.task)["source"] == "bfcl"
    listed = Recipe.model_validate({**data, "tasks": {"agent": {"source": ["bfcl", "fake"], "bfcl": BFCL_OPTS}}})
    other = {s.id: config_hash(s) for s in build_graph(listed, check=False)}
    assert other["sft.agent"] != hashes["sft.agent"] and other["sft.math"] == hashes["sft.math"]
    assert next(s for s in build_graph(listed, check=False) if s.id == "sft.agent").inputs == ["bfcl", "fake"]
