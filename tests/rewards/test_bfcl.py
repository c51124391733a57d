"""BFCL from the bfcl-eval package: the loader (rows, the train/held-out split, bad entries), BFCL's official AST
checker on DSML calls, and the AST reward through the agent verifier GRPO uses."""
import json
import sys
from pathlib import Path

import pytest

import rewards.envs.bfcl as bfcl_env
import rewards.tasks.bfcl as bfcl_tasks
from core.chat import format_tool_call, format_tool_calls
from rewards.base import score_batch, score_local
from rewards.envs.bfcl import BfclMissing, get_checker, official_ast_checker, package_dir
from rewards.tasks import load_tasks
from rewards.tasks.bfcl import (CATEGORIES, DEFAULT_CATEGORIES, HELD_OUT_EVERY, read_category, split_of,
                                suite_rows)
from rewards.tasks.rows import AGENT_ENVS, RowError

BFCL = {"source": "bfcl"}


pytestmark = pytest.mark.usefixtures("datasets_cache")   # tests/conftest.py


def _demo_text(sample: dict) -> str:
    """The transcript of a row's demonstration (its assistant turn, as SFT trains on it)."""
    a = sample["example"]["messages"][-1]
    if a.get("tool_calls"):
        return "\n\n" + format_tool_calls([c["function"] for c in a["tool_calls"]]) + "<|end|>"
    return a["content"] + "<|end|>"


# ------------------------------------------------------------------------------------------------------ loader
def test_package_rows_are_agent_rows_of_env_bfcl_with_the_ast_checker():
    rows = load_tasks("agent", "train", 12, 0, BFCL)
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    # the categories are interleaved: the first rows cover every default category, in turn
    assert [r["category"] for r in rows[:4]] == list(DEFAULT_CATEGORIES)
    for r in rows:
        assert r["domain"] == "agent" and r["env"] == "bfcl" and r["checker"] == "ast" and r["max_turns"] == 1
        assert r["id"].startswith(r["category"] + "_") and r["origin"]["source"] == f"bfcl:{r['category']}"
        funcs, truth = json.loads(r["functions"]), json.loads(r["ground_truth"])
        assert funcs and all(len(t) == 1 for t in truth)               # BFCL's possible-answer form
        assert {next(iter(t)) for t in truth} <= {f["name"] for f in funcs}
        assert r["prompt"] and r["prompt"] == r["example"]["messages"][0]["content"]
        assert "tool_calls" not in r                                    # bfcl rows are judged by ground_truth
    simple = next(r for r in rows if r["id"] == "simple_python_0")
    assert "triangle" in simple["prompt"] and json.loads(simple["ground_truth"])[0]["calculate_triangle_area"][
        "base"] == [10]


def test_train_and_held_out_never_overlap_and_cover_every_entry():
    for cat in ("simple_python", "parallel"):
        ids = [e["id"] for _, e in read_category(cat)]
        src = {"source": "bfcl", "bfcl": {"categories": [cat]}}
        train = {r["id"] for r in load_tasks("agent", "train", 10 ** 6, 0, src)}
        test = {r["id"] for r in load_tasks("agent", "test", 10 ** 6, 0, src)}
        assert train and test and not train & test and train | test == set(ids)
        assert abs(len(test) / len(ids) - 1 / HELD_OUT_EVERY) < 0.08
        assert all(split_of(i) == "test" for i in test) and split_of(ids[0]) == split_of(ids[0])
    # the split is a function of the id alone: other categories, sizes or max_chars do not move a row
    small = load_tasks("agent", "test", 5, 0, {"source": "bfcl", "bfcl": {"categories": ["parallel"],
                                                                        "max_chars": 800}})
    assert all(split_of(r["id"]) == "test" and len(r["prompt"]) <= 800 for r in small)


def test_max_chars_keeps_small_entries_only_and_suite_rows_are_held_out():
    rows = load_tasks("agent", "test", 10 ** 6, 0, {"source": "bfcl", "bfcl": {"categories": ["multiple"],
                                                                              "max_chars": 1000}})
    everything = load_tasks("agent", "test", 10 ** 6, 0, {"source": "bfcl", "bfcl": {"categories": ["multiple"]}})
    assert 0 < len(rows) < len(everything)
    assert all(bfcl_tasks.prompt_chars(e) <= 1000 for _, e in read_category("multiple")
               if e["id"] in {r["id"] for r in rows})
    suite = suite_rows(["simple_python", "parallel"], limit=3)
    assert [len(v) for v in suite.values()] == [3, 3]
    assert all(split_of(r["id"]) == "test" and r["category"] == c for c, v in suite.items() for r in v)


@pytest.mark.parametrize("category", ["simple_python", "multiple", "parallel", "parallel_multiple",
                                      "irrelevance"])
def test_every_demonstration_scores_1_with_the_official_checker(category):
    rows = load_tasks("agent", "train", 25, 0, {"source": "bfcl", "bfcl": {"categories": [category]}})
    verdicts = [score_local("agent", _demo_text(r), r, "non_think") for r in rows]
    assert [v.score for v in verdicts] == [1.0] * len(rows), [v.details.get("reason") for v in verdicts]


def _fake_package(tmp_path, monkeypatch, questions, answers):
    root = tmp_path / "bfcl_eval"
    (root / "data" / "possible_answer").mkdir(parents=True)
    (root / "data" / "BFCL_v4_simple_python.json").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (root / "data" / "possible_answer" / "BFCL_v4_simple_python.json").write_text(
        "".join(json.dumps(a) + "\n" for a in answers))
    monkeypatch.setattr(bfcl_tasks, "package_dir", lambda: root)
    return root


FN = {"name": "calc_area", "description": "Area.", "parameters": {
    "type": "dict", "properties": {"base": {"type": "integer"}, "height": {"type": "integer"}},
    "required": ["base", "height"]}}


def _all_train_entries(n):
    """n ids that hash to the train split (so a fake file's rows are read by a train load)."""
    out, i = [], 0
    while len(out) < n:
        if split_of(f"simple_python_{i}") == "train":
            out.append(f"simple_python_{i}")
        i += 1
    return out


@pytest.mark.parametrize("bad, parts", [
    ({"question": "Area?"}, ["bfcl:simple_python row 1: question: expected a list of turns"]),
    ({"function": [{"name": "calc_area", "parameters": {"type": "dict", "properties": {"base": {"type": "str"}}}}]},
     ["row 1: functions[0].parameters.properties.base.type: 'str' is not one of BFCL's Python types"]),
    ({"ground_truth": [{"area": {"base": [1]}}]}, ["row 1: ground_truth[0]: 'area' is not among the row's functions"]),
    ({"ground_truth": {"calc_area": {}}}, ["row 1: ground_truth: expected a list"]),
])
def test_a_bad_package_entry_is_one_line_naming_source_row_and_field(tmp_path, monkeypatch, bad, parts):
    ids = _all_train_entries(2)
    good_q = {"question": [[{"role": "user", "content": "Area of 2 by 3?"}]], "function": [FN]}
    good_a = {"ground_truth": [{"calc_area": {"base": [2], "height": [3]}}]}
    q = [{"id": ids[0], **good_q}, {"id": ids[1], **good_q, **{k: v for k, v in bad.items() if k != "ground_truth"}}]
    a = [{"id": ids[0], **good_a}, {"id": ids[1], **({"ground_truth": bad["ground_truth"]} if "ground_truth" in bad
                                                    else good_a)}]
    _fake_package(tmp_path, monkeypatch, q, a)
    src = {"source": "bfcl", "bfcl": {"categories": ["simple_python"]}}
    assert len(load_tasks("agent", "train", 1, 0, src)) == 1               # the good first row alone loads
    with pytest.raises(RowError) as e:
        load_tasks("agent", "train", 2, 0, src)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("tasks.agent: bfcl:simple_python row 1: ")
    for p in parts:
        assert p in msg, msg


def test_missing_files_and_missing_package_are_one_line(tmp_path, monkeypatch):
    root = tmp_path / "bfcl_eval"
    (root / "data").mkdir(parents=True)
    monkeypatch.setattr(bfcl_tasks, "package_dir", lambda: root)
    with pytest.raises(RowError, match=r"^tasks.agent: bfcl: bfcl: .*BFCL_v4_simple_python.json: no such file"):
        load_tasks("agent", "train", 1, 0, BFCL)

    def missing():
        raise BfclMissing(f"the bfcl-eval package is not installed ({bfcl_env.INSTALL_HINT})")

    monkeypatch.setattr(bfcl_tasks, "package_dir", missing)
    with pytest.raises(RowError) as e:
        load_tasks("agent", "train", 1, 0, BFCL)
    assert "\n" not in str(e.value) and "pip install --no-deps bfcl-eval==2026.3.23" in str(e.value)
    # a dataset row that asks for the AST checker, without the package: the row's checker field, one line
    monkeypatch.setattr(bfcl_env, "package_dir", missing)
    monkeypatch.setattr(bfcl_env, "_AST_MODULE", None)
    f = tmp_path / "b.jsonl"
    f.write_text(json.dumps({"prompt": "Area of 2 by 3?", "env": "bfcl", "functions": [FN],
                             "ground_truth": [{"calc_area": {"base": [2], "height": [3]}}]}) + "\n")
    with pytest.raises(RowError, match=r"row 0: checker: ast: the bfcl-eval package is not installed \(pip"):
        load_tasks("agent", "train", 1, 0, {"source": "json", "data_files": str(f)})


def test_source_bfcl_is_for_the_agent_domain_only():
    with pytest.raises(RowError, match="^tasks.math: source: bfcl gives function-calling rows of the agent domain"):
        load_tasks("math", "train", 1, 0, BFCL)
    with pytest.raises(RowError, match="unknown BFCL category 'simple_rust'"):
        load_tasks("agent", "train", 1, 0, {"source": "bfcl", "bfcl": {"categories": ["simple_rust"]}})


# ------------------------------------------------------------------------------------------- dataset rows
def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_dataset_rows_of_env_bfcl_need_functions_and_ground_truth_not_tool_calls(tmp_path):
    assert {"inventory", "bfcl", "python"} <= set(AGENT_ENVS)
    row = {"prompt": "Area of 2 by 3?", "env": "bfcl", "functions": json.dumps([FN]),
           "ground_truth": [{"name": "calc_area", "arguments": {"base": 2, "height": 3}}]}
    (s,) = load_tasks("agent", "train", 1, 0, {"source": "json", "data_files": _jsonl(tmp_path / "a.jsonl", [row])})
    assert s["env"] == "bfcl" and s["checker"] == "ast" and s["category"] == "simple_python"
    assert json.loads(s["ground_truth"]) == [{"calc_area": {"base": [2], "height": [3]}}]   # possible-answer form
    assert score_local("agent", "\n\n" + format_tool_call("calc_area", {"base": 2, "height": 3}) + "<|end|>", s,
                       "non_think").score == 1.0
    bad = [({k: v for k, v in row.items() if k != "functions"}, "row 0: functions: missing"),
           ({k: v for k, v in row.items() if k != "ground_truth"}, "row 0: ground_truth: missing"),
           ({**row, "ground_truth": [{"name": "nope", "arguments": {}}]},
            "row 0: ground_truth[0]: 'nope' is not among the row's functions (calc_area)"),
           ({**row, "functions": [{"description": "x"}]}, "row 0: functions[0].name: missing"),
           ({**row, "checker": "fuzzy"}, "row 0: checker: unknown BFCL checker 'fuzzy'"),
           ({**row, "max_turns": 0}, "row 0: max_turns: expected a positive integer")]
    for i, (r, part) in enumerate(bad):
        f = _jsonl(tmp_path / f"b{i}.jsonl", [r])
        with pytest.raises(RowError) as e:
            load_tasks("agent", "train", 1, 0, {"source": "json", "data_files": f})
        assert "\n" not in str(e.value) and part in str(e.value), str(e.value)


def test_python_env_rows_are_code_tasks(tmp_path):
    row = {"prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n", "env": "python", "entry_point": "add",
           "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
    (s,) = load_tasks("agent", "train", 1, 0, {"source": "json", "data_files": _jsonl(tmp_path / "p.jsonl", [row])})
    assert s["env"] == "python" and s["entry_point"] == "add" and s["max_turns"] == 3
    f = _jsonl(tmp_path / "q.jsonl", [{**row, "entry_point": "not an id"}])
    with pytest.raises(RowError, match="row 0: entry_point: 'not an id' is not a Python identifier"):
        load_tasks("agent", "train", 1, 0, {"source": "json", "data_files": f})


# ----------------------------------------------------------------------------------------- the AST checker
FUNCS = [{"name": "calc_area", "description": "Area of a triangle.", "parameters": {
            "type": "dict", "properties": {"base": {"type": "integer"}, "height": {"type": "float"},
                                           "unit": {"type": "string"}}, "required": ["base", "height"]}},
         {"name": "math.factorial", "parameters": {"type": "dict", "properties": {"number": {"type": "integer"}},
                                                   "required": ["number"]}},
         {"name": "spotify.play", "parameters": {"type": "dict", "properties": {
             "artist": {"type": "string"}, "duration": {"type": "integer"},
             "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["artist", "duration"]}}]


def _row(truth, category, funcs=FUNCS):
    return {"prompt": "q", "domain": "agent", "env": "bfcl", "functions": json.dumps(funcs),
            "ground_truth": json.dumps(truth), "category": category, "checker": "ast", "max_turns": 1}


def _ast(calls, row, mode="non_think"):
    text = ("\n\n" + format_tool_calls(calls) if calls else "None of the functions applies.") + "<|end|>"
    if mode != "non_think":
        text = "I call it.</think>" + text
    return score_local("agent", text, row, mode)


SIMPLE = _row([{"calc_area": {"base": [10], "height": [5.0], "unit": ["cm", ""]}}], "simple_python", FUNCS[:1])
PARALLEL = _row([{"spotify.play": {"artist": ["Taylor Swift"], "duration": [20], "tags": ["", ["pop"]]}},
                 {"spotify.play": {"artist": ["Maroon 5"], "duration": [15], "tags": [""]}}], "parallel", FUNCS[2:])
MULTIPLE = _row([{"math.factorial": {"number": [5]}}], "multiple")


def test_official_checker_is_the_package_module_and_leaves_no_stub():
    mod = official_ast_checker()
    assert Path(mod.__file__).resolve() == (package_dir() / "eval_checker" / "ast_eval" / "ast_checker.py").resolve()
    assert "bfcl_eval.constants.model_config" not in sys.modules      # the registry stub is gone again
    assert get_checker("ast") is bfcl_env.ast_checker


def test_simple_call_right_with_optional_and_int_for_float_wrong_type_and_value():
    assert _ast([{"name": "calc_area", "arguments": {"base": 10, "height": 5}}], SIMPLE).score == 1.0   # 5 -> 5.0
    assert _ast([{"name": "calc_area", "arguments": {"base": 10, "height": 5.0, "unit": "CM"}}],
                SIMPLE).score == 1.0                                   # BFCL compares strings case-insensitively
    v = _ast([{"name": "calc_area", "arguments": {"base": "10", "height": 5.0}}], SIMPLE)
    assert v.score == 0.0 and v.details["failed_checks"] == ["calls_mismatch"]
    assert v.details["reason"].startswith("type_error:simple") and "'base'" in v.details["reason"]
    v = _ast([{"name": "calc_area", "arguments": {"base": 11, "height": 5.0}}], SIMPLE)
    assert v.score == 0.0 and v.details["reason"].startswith("value_error")
    v = _ast([{"name": "calc_area", "arguments": {"base": 10}}], SIMPLE)
    assert v.score == 0.0 and "missing_required" in v.details["reason"]
    v = _ast([{"name": "calc_area", "arguments": {"base": 10, "height": 5.0, "color": "red"}}], SIMPLE)
    assert v.score == 0.0 and "unexpected_param" in v.details["reason"]
    assert _ast([], SIMPLE).score == 0.0                                # no call at all
    two = [{"name": "calc_area", "arguments": {"base": 10, "height": 5.0}}] * 2
    assert "Wrong number of functions" in _ast(two, SIMPLE).details["reason"]


def test_parallel_calls_match_in_any_order_and_all_must_match():
    ts = {"name": "spotify.play", "arguments": {"artist": "Taylor Swift", "duration": 20}}
    m5 = {"name": "spotify.play", "arguments": {"artist": "Maroon 5", "duration": 15}}
    assert _ast([ts, m5], PARALLEL).score == 1.0
    assert _ast([m5, ts], PARALLEL).score == 1.0                         # order-free
    with_tags = {"name": "spotify.play", "arguments": {**ts["arguments"], "tags": ["pop"]}}
    assert _ast([m5, with_tags], PARALLEL).score == 1.0                  # an optional list parameter
    assert _ast([ts], PARALLEL).score == 0.0                             # one call missing
    assert _ast([ts, ts], PARALLEL).score == 0.0                         # the same call twice
    wrong = {"name": "spotify.play", "arguments": {"artist": "Maroon 5", "duration": 16}}
    v = _ast([ts, wrong], PARALLEL)
    assert v.score == 0.0 and "cannot_find_match" in v.details["reason"]
    bad_items = {"name": "spotify.play", "arguments": {**ts["arguments"], "tags": [1]}}
    assert _ast([m5, bad_items], PARALLEL).score == 0.0                  # a wrong type inside the list


def test_multiple_picks_one_function_by_its_dotted_name():
    assert _ast([{"name": "math.factorial", "arguments": {"number": 5}}], MULTIPLE).score == 1.0
    assert _ast([{"name": "math_factorial", "arguments": {"number": 5}}], MULTIPLE).score == 0.0  # names keep dots
    assert _ast([{"name": "calc_area", "arguments": {"base": 5, "height": 1}}], MULTIPLE).score == 0.0


def test_irrelevance_rows_expect_no_call_and_reasoning_calls_do_not_count():
    none = _row([], "irrelevance")
    assert _ast([], none).score == 1.0
    assert _ast([{"name": "math.factorial", "arguments": {"number": 5}}], none).score == 0.0
    ok = [{"name": "math.factorial", "arguments": {"number": 5}}]
    assert _ast(ok, MULTIPLE, mode="think_high").score == 1.0
    in_reasoning = "\n\n" + format_tool_calls(ok) + "</think>I would call it.<|end|>"
    assert score_local("agent", in_reasoning, MULTIPLE, "think_high").score == 0.0


def test_ast_reward_through_the_verifier_workers_as_grpo_scores():
    """``score_batch`` (GRPO's path: agent verifier in worker processes) loads the checker in the workers."""
    rows = load_tasks("agent", "train", 4, 0, BFCL)
    right = [_demo_text(r) for r in rows]
    wrong = ["\n\n" + format_tool_call("no_such_function", {"x": 1}) + "<|end|>"] * len(rows)
    got = score_batch("agent", right + wrong, rows + rows, "non_think", workers=2)
    assert [v.score for v in got] == [1.0] * len(rows) + [0.0] * len(rows)
    assert all(v.details["env"] == "bfcl" for v in got)


def test_known_categories():
    assert set(DEFAULT_CATEGORIES) <= set(CATEGORIES)
    assert all((package_dir() / "data" / f"BFCL_v4_{c}.json").is_file() for c in CATEGORIES)


def test_the_pin_is_one_version_everywhere():
    """The Makefile installs, pyproject's `bfcl` extra names and the code expects the same bfcl-eval version."""
    import importlib.metadata

    root = Path(__file__).resolve().parents[2]
    pin = f"bfcl-eval=={bfcl_env.BFCL_VERSION}"
    assert f"'{pin}'" in (root / "Makefile").read_text() and "--no-deps" in bfcl_env.INSTALL_HINT
    assert f'bfcl = ["{pin}"]' in (root / "pyproject.toml").read_text()
    assert importlib.metadata.version("bfcl-eval") == bfcl_env.BFCL_VERSION
