"""Evaluation suites chosen in the recipe's ``eval`` section: the schema (one-line errors at `pipeline validate`),
the rows' spec, HumanEval's pass@k from its functional tests, BFCL's accuracy per category from the official AST
checker, reuse by the eval stage, and the prompts RL / evaluation send (what SFT trained on)."""
import json
from pathlib import Path

import pytest
import yaml

import train.evaluate as evaluate
from conftest import run_cli
from core.chat import format_tool_calls, render_prompt
from pipeline.recipe import Recipe, RecipeError, load_recipe
from rewards.humaneval import problems
from rewards.tasks import load_tasks, system_message
from rewards.tasks.agent import system_for
from train.config import HumanEvalSuite, Suites, held_out
from train.datasets import conversation
from train.eval_stage import reusable_rows
from train.evaluate import HeldOutEvaluator, prompt_messages

ROW_KEYS = {"model", "domain", "mode", "metric", "value", "n", "spec", "ci_low", "ci_high"}


def _recipe(suites, **over):
    data = {"name": "t", "domains": ["code", "agent"], "modes": ["non_think"],
            "tasks": {"code": {"n_eval": 2}, "agent": {"n_eval": 2}},
            "eval": {"samples": 1, "pass_k": [1], "greedy": False, "max_tokens": {"non_think": 8},
                     "ci_resamples": 200, "suites": suites}}
    data.update(over)
    return Recipe.model_validate(data)


def _write(tmp_path, data) -> Path:
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


# ------------------------------------------------------------------------------------------------------ schema
def test_suites_as_a_list_or_a_mapping_with_options():
    s = _recipe(["humaneval", "bfcl"]).eval.suites
    assert s.names() == ["humaneval", "bfcl"] and s.humaneval == HumanEvalSuite()
    assert s.bfcl.categories == ["simple_python", "multiple", "parallel", "parallel_multiple"]
    s = _recipe({"humaneval": {"limit": 5, "samples": 4, "pass_k": [1, 4]},
                 "bfcl": {"categories": ["parallel"], "limit": 2, "max_chars": 900}}).eval.suites
    assert (s.humaneval.limit, s.humaneval.samples, s.bfcl.categories, s.bfcl.limit) == (5, 4, ["parallel"], 2)
    assert s.for_domain("code") == {"humaneval": s.humaneval} and s.for_domain("math") == {}
    assert _recipe({"humaneval": None}).eval.suites.names() == ["humaneval"]     # `humaneval:` with no options
    assert Suites().names() == []


@pytest.mark.parametrize("suites, message", [
    (["humaneval", "mbpp"], "eval.suites: unknown suite 'mbpp' (known: humaneval, bfcl, math500, ifbench)"),
    ({"gsm8k": {}}, "eval.suites: unknown suite 'gsm8k'"),
    (["bfcl", "bfcl"], "eval.suites: a suite is listed twice"),
    ({"humaneval": {"samples": 2, "pass_k": [4]}}, "eval.suites.humaneval: pass_k: pass@4 needs 1 <= k <= samples"),
    ({"humaneval": {"limt": 3}}, "unknown key 'eval.suites.humaneval.limt'"),
    ({"bfcl": {"categories": ["simple_cobol"]}}, "eval.suites.bfcl.categories: unknown BFCL category 'simple_cobol'"),
])
def test_a_bad_suite_is_one_line_at_validate(tmp_path, suites, message):
    f = _write(tmp_path, {"name": "r", "domains": ["code", "agent"], "eval": {"suites": suites}})
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    assert "\n" not in str(e.value) and message in str(e.value), str(e.value)


def test_pipeline_validate_rejects_an_unknown_suite_with_one_line(tmp_path):
    f = _write(tmp_path, {"name": "r", "domains": ["code"], "eval": {"suites": ["humaneval", "mbpp"]}})
    r = run_cli("validate", f, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    assert len(lines) == 1 and "eval.suites: unknown suite 'mbpp'" in lines[0], lines
    ok = _write(tmp_path, {"name": "r", "domains": ["code"], "eval": {"suites": ["humaneval"]}})
    assert run_cli("validate", ok, timeout=120).returncode == 0


def test_a_suite_needs_its_domain_and_humaneval_true_still_acts(tmp_path):
    f = _write(tmp_path, {"name": "r", "domains": ["math", "code"], "eval": {"suites": ["bfcl"]}})
    with pytest.raises(RecipeError, match="eval.suites.bfcl: scores the agent domain, which is not among the "
                                          "recipe's domains \\(math, code\\)"):
        load_recipe(f)
    h = held_out(Recipe(name="t", domains=["code"], eval={"humaneval": True}))
    assert h.suites.humaneval == HumanEvalSuite()                     # all 164 problems, greedy pass@1
    h = held_out(Recipe(name="t", domains=["code"], eval={"humaneval": True, "suites": {"humaneval": {"limit": 3}}}))
    assert h.suites.humaneval.limit == 3                              # the suites entry's options win
    with pytest.raises(ValueError, match="eval.humaneval: scores the code domain"):
        held_out(Recipe(name="t", domains=["math"], eval={"humaneval": True}))


def test_task_source_bfcl_fields_are_checked(tmp_path):
    base = {"name": "r", "domains": ["agent"]}
    for tasks, message in [
        ({"agent": {"source": "bfcl", "data_files": "x.json"}}, "tasks.agent: data_files: does not apply to source "
                                                                 "bfcl"),
        ({"agent": {"source": "bfcl", "train_split": "train[5:]"}}, "tasks.agent: train_split: does not apply"),
        ({"agent": {"source": "json", "data_files": "x.json", "bfcl": {}}}, "tasks.agent: bfcl: options of source: "
                                                                             "bfcl"),
        ({"agent": {"source": "bfcl", "bfcl": {"categories": ["sql"]}}}, "unknown BFCL category 'sql'"),
        ({"math": {"source": "bfcl"}}, "tasks: math.source: bfcl gives rows of the agent domain, not math"),
    ]:
        with pytest.raises(RecipeError) as e:
            load_recipe(_write(tmp_path, {**base, "domains": ["agent", "math"], "tasks": tasks}))
        assert "\n" not in str(e.value) and message in str(e.value), str(e.value)
    r = load_recipe(_write(tmp_path, {**base, "tasks": {"agent": {"source": "bfcl", "sft_modes": "all",
                                                                  "bfcl": {"max_chars": 800}}}}))
    assert r.task_source("agent").bfcl.max_chars == 800


def test_cell_spec_covers_the_suites_of_its_domain_only():
    a = held_out(_recipe(["humaneval", "bfcl"]))
    b = held_out(_recipe({"humaneval": {"limit": 3}, "bfcl": {}}))
    c = held_out(_recipe({"humaneval": {}, "bfcl": {"limit": 3}}))
    assert a.cell_key("code", "non_think") != b.cell_key("code", "non_think")
    assert a.cell_key("agent", "non_think") == b.cell_key("agent", "non_think")
    assert a.cell_key("agent", "non_think") != c.cell_key("agent", "non_think")
    assert a.cell_key("code", "non_think") == c.cell_key("code", "non_think")


# ------------------------------------------------------------------------------------------------------ prompts
def test_prompt_messages_use_the_rows_own_system_and_the_agent_tools(tmp_path):
    rows = load_tasks("agent", "train", 3, 0, {"source": "bfcl"})
    for r in rows:
        msgs = prompt_messages(r)
        # the environment's tools ride on the system message (an agentic conversation: V4 keeps every turn's
        # reasoning) and render as the row's system prompt text
        shown = render_prompt(msgs[:1], "non_think", add_generation_prompt=False)
        assert shown == render_prompt([{"role": "system", "content": system_for(r)}], "non_think", False)
        assert "## Tools" in shown and msgs[0]["tools"][0]["function"]["name"] == json.loads(r["functions"])[0]["name"]
        assert msgs == conversation(r).messages("non_think")[:2]          # exactly what SFT trained on
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "system", "content": "Answer in one line."},
                                          {"role": "user", "content": "2+3?"},
                                          {"role": "assistant", "content": "5"}], "answer": "5"}) + "\n")
    (s,) = load_tasks("math", "train", 1, 0, {"source": "json", "data_files": str(f)})
    assert prompt_messages(s) == conversation(s).messages("non_think")[:2]
    assert prompt_messages(s)[0]["content"] == "Answer in one line."
    g = load_tasks("code", "train", 1, 0)[0]                               # a generated row: the domain's system
    sys = system_message("code")
    assert prompt_messages(g) == ([{"role": "system", "content": sys}] if sys else []) + \
        [{"role": "user", "content": g["prompt"]}]


# ------------------------------------------------------------------------------------------------- suite scoring
def _fake_generation(monkeypatch, answer):
    """``generate_texts`` answering each sample with ``answer(sample, i)`` for the i-th of ``params.n``."""
    def fake(engine, tok, samples, mode, params):
        texts = [[answer(s, i) for i in range(params.n)] for s in samples]
        return texts, [[3] * params.n for _ in samples]

    monkeypatch.setattr(evaluate, "generate_texts", fake)


def test_humaneval_suite_canonical_passes_a_wrong_body_fails(monkeypatch):
    h = held_out(_recipe({"humaneval": {"limit": 3}}))
    ev = HeldOutEvaluator(h, workers=1)
    spec = h.cell_key("code", "non_think")
    _fake_generation(monkeypatch, lambda s, i: s["canonical_solution"] + "<|end|>")
    (r,) = ev.suite_humaneval(None, None, "m", "non_think", h.suites.humaneval, spec)
    assert ROW_KEYS <= set(r) and (r["metric"], r["domain"], r["value"], r["n"], r["spec"]) == \
        ("humaneval_pass@1", "code", 1.0, 3, spec)
    _fake_generation(monkeypatch, lambda s, i: "    return None\n<|end|>")
    (r,) = ev.suite_humaneval(None, None, "m", "non_think", h.suites.humaneval, spec)
    assert r["value"] == 0.0 and r["n"] == 3
    # several samples: pass@k by HumanEval's estimator (one right of two: pass@1 = 0.5, pass@2 = 1)
    h2 = held_out(_recipe({"humaneval": {"limit": 2, "samples": 2, "pass_k": [1, 2]}}))
    _fake_generation(monkeypatch, lambda s, i: (s["canonical_solution"] if i == 0 else "    return None\n") + "<|end|>")
    rows = HeldOutEvaluator(h2).suite_humaneval(None, None, "m", "non_think", h2.suites.humaneval, "x")
    assert {r["metric"]: r["value"] for r in rows} == {"humaneval_pass@1": 0.5, "humaneval_pass@2": 1.0}
    assert [p["task_id"] for p in problems(2)] == ["HumanEval/0", "HumanEval/1"]


def _demo(s):
    a = s["example"]["messages"][-1]
    return ("\n\n" + format_tool_calls([c["function"] for c in a["tool_calls"]]) if a.get("tool_calls")
            else a["content"]) + "<|end|>"


def test_bfcl_suite_accuracy_per_category_from_the_ast_checker(monkeypatch):
    h = held_out(_recipe({"bfcl": {"categories": ["simple_python", "parallel"], "limit": 2}}))
    ev = HeldOutEvaluator(h, workers=1)
    spec = h.cell_key("agent", "non_think")
    _fake_generation(monkeypatch, lambda s, i: _demo(s))
    rows = ev.suite_bfcl(None, None, "m", "non_think", h.suites.bfcl, spec)
    got = {r["metric"]: r for r in rows}
    assert set(got) == {"bfcl_accuracy", "bfcl_accuracy.simple_python", "bfcl_accuracy.parallel"}
    assert all(ROW_KEYS <= set(r) and r["domain"] == "agent" and r["spec"] == spec for r in rows)
    assert got["bfcl_accuracy"]["value"] == 1.0 and got["bfcl_accuracy"]["n"] == 4
    assert got["bfcl_accuracy.parallel"]["n"] == 2
    # parallel rows answered with only their first call: wrong; simple rows right -> 1.0 / 0.0, mean 0.5
    def half(s):
        a = s["example"]["messages"][-1]
        return "\n\n" + format_tool_calls([a["tool_calls"][0]["function"]]) + "<|end|>"

    _fake_generation(monkeypatch, lambda s, i: half(s))
    got = {r["metric"]: r["value"] for r in ev.suite_bfcl(None, None, "m", "non_think", h.suites.bfcl, spec)}
    assert got == {"bfcl_accuracy": 0.5, "bfcl_accuracy.simple_python": 1.0, "bfcl_accuracy.parallel": 0.0}


def test_suite_rows_in_a_cell_on_a_real_model(tiny_dir):
    """The whole path (engine, episodes, verifier) on the tiny model: every suite row in the cell of its domain."""
    h = held_out(_recipe({"humaneval": {"limit": 2}, "bfcl": {"categories": ["simple_python"], "limit": 1}},
                         tasks={"code": {"n_eval": 1}, "agent": {"source": "bfcl", "n_eval": 1}}))
    rows = HeldOutEvaluator(h, workers=1)("m", Path(tiny_dir), [("code", "non_think"), ("agent", "non_think")],
                                          log=lambda *_: None)
    got = {(r["domain"], r["metric"]): r for r in rows}
    assert got[("code", "humaneval_pass@1")]["n"] == 2 and got[("agent", "bfcl_accuracy")]["n"] == 1
    assert ("agent", "bfcl_accuracy.simple_python") in got and ("code", "bfcl_accuracy") not in got
    assert got[("agent", "bfcl_accuracy")]["spec"] == h.cell_key("agent", "non_think")
    assert all(0.0 <= r["value"] <= 1.0 for r in rows if "accuracy" in r["metric"] or "pass" in r["metric"])


def test_eval_stage_reuses_suite_rows_with_their_cell():
    h = held_out(_recipe({"humaneval": {"limit": 3}, "bfcl": {"limit": 2}}))
    rows = [{"model": "sft.x", "domain": d, "mode": "non_think", "metric": m, "value": 0.5, "n": 2,
             "spec": h.cell_key(d, "non_think")}
            for d, m in (("code", "accuracy"), ("code", "humaneval_pass@1"), ("agent", "accuracy"),
                         ("agent", "bfcl_accuracy"))]
    manifest = {"status": "complete", "eval_rows": rows}
    cells = [("code", "non_think"), ("agent", "non_think")]
    assert reusable_rows(manifest, h, cells) == (rows, [])
    other = held_out(_recipe({"humaneval": {"limit": 4}, "bfcl": {"limit": 2}}))   # the code cell's suite changed
    got, missing = reusable_rows(manifest, other, cells)
    assert missing == [("code", "non_think")] and got == rows[2:]
