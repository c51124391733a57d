"""ToolTalk (nvidia-tooltalk) as an agent source and tool environment: rows, the executor, ToolTalk's checker."""
from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from core.chat import ToolCall, format_tool_calls, render_prompt
from rewards.agent import verify_agent
from rewards.envs import ENVS
from rewards.envs.tooltalk import (UTILS_FUNCTIONS, ToolTalkEnv, ToolTalkMissing, api_schema, text_similarity,
                                   tooltalk_modules)
from rewards.tasks.rows import RowError, read_row
from rewards.tasks.tooltalk import conversation_rows, load_tooltalk, read_conversation, split_of
from train.datasets import conversation
from train.evaluate import prompt_messages

ALL = {"tooltalk": {"api_mode": "exact"}}


@pytest.fixture(scope="module")
def rows():
    return {s: load_tooltalk("agent", s, 10 ** 6, ALL) for s in ("train", "test")}


def _row(rows, rid):
    return next(r for s in rows.values() for r in s if r["id"] == rid)


def _gold_transcript(sample, mode):
    """The demonstration after the prompt: what a model that makes ToolTalk's ground-truth calls writes."""
    full = render_prompt(conversation(sample).messages(mode), mode, add_generation_prompt=False)
    prompt = render_prompt(prompt_messages(sample, mode), mode)
    assert full.startswith(prompt), sample["id"]        # RL prompts are the SFT context, history included
    return full[len(prompt):]


def _episode(turns):
    """A transcript of assistant turns (non_think), tool results in between (they are never trusted)."""
    out = ""
    for k, t in enumerate(turns):
        out += ("<|assistant|></think>" if k else "") + t + "<|end|>"
        if k + 1 < len(turns):
            out += "<|user|><tool_result>forged</tool_result><|end|>"
    return out


def test_every_conversation_is_read_and_split_by_conversation(rows):
    tr, te = rows["train"], rows["test"]
    assert len(tr) + len(te) == 230                      # every assistant turn of the 78 conversations
    convs = {s: {json.loads(r["tooltalk"])["conversation"] for r in rows[s]} for s in rows}
    assert len(convs["train"]) + len(convs["test"]) == 78 and not convs["train"] & convs["test"]
    assert all(split_of(c) == s for s in convs for c in convs[s])
    ids = [r["id"] for r in tr + te]
    assert len(set(ids)) == len(ids)
    assert load_tooltalk("agent", "train", 10 ** 6, ALL) == tr        # deterministic
    first = load_tooltalk("agent", "train", 4, ALL)
    assert {r["origin"]["source"].split(":")[1].split("/")[0] for r in first} == {"easy", "tooltalk"}  # interleaved


@pytest.mark.parametrize("mode", ["non_think", "think_high"])
def test_ground_truth_calls_score_one_through_the_executor(rows, mode):
    """Every turn's demonstration (ToolTalk's ground-truth calls, one per round, then the turn's text) replays on a
    fresh executor and passes ToolTalk's own checker: responses are deterministic and the rows' history, session and
    databases are what the conversation had."""
    failed = []
    for s in rows["train"] + rows["test"]:
        v = verify_agent(_gold_transcript(s, mode), s, mode)
        if v.score != 1.0:
            failed.append((s["id"], v.details["failed_checks"]))
    assert failed == []


def test_wrong_missing_and_extra_calls_fail(rows):
    s = _row(rows, "tooltalk/AddAlarm-easy/1")          # "set an alarm for 6:30" (pm): AddAlarm(time=18:30:00)
    right = format_tool_calls([{"name": "AddAlarm", "arguments": {"time": "18:30:00"}}])
    wrong = format_tool_calls([{"name": "AddAlarm", "arguments": {"time": "06:30:00"}}])
    assert verify_agent(_episode([right, "Done."]), s, "non_think").score == 1.0
    v = verify_agent(_episode([wrong, "Done."]), s, "non_think")
    assert v.score == 0 and set(v.details["failed_checks"]) == {"missed_calls", "bad_actions"}
    assert v.details["tooltalk"]["bad_actions"] == 1                  # a successful action matching nothing
    v = verify_agent(_episode(["I set it."]), s, "non_think")
    assert v.score == 0 and v.details["failed_checks"] == ["missed_calls"]
    v = verify_agent(_episode([right, right, right]), s, "non_think")         # never answers: the turn cap
    assert v.score == 0 and "no_final_answer_within_turn_cap" in v.details["failed_checks"]
    quiet = _row(rows, "tooltalk/Alarm-Calendar-Messages-AddAlarm-1/1")   # logged in, asks first: no call is right
    assert json.loads(quiet["tooltalk"])["apis"] == []
    assert verify_agent(_episode(["What time?"]), quiet, "non_think").score == 1.0
    v = verify_agent(_episode([wrong, "Done."]), quiet, "non_think")
    assert v.score == 0 and v.details["failed_checks"] == ["bad_actions"]
    look = format_tool_calls([{"name": "FindAlarms", "arguments": {}}])   # a read-only call is no bad action
    assert verify_agent(_episode([look, "What time?"]), quiet, "non_think").score == 1.0


def test_the_executor_runs_the_mock_apis(rows):
    s = _row(rows, "tooltalk/AddAlarm-easy/1")
    env = ENVS["tooltalk"]()
    env.reset(s)
    assert json.loads(env.step(ToolCall("AddAlarm", {"time": "18:30:00"}))) == \
        {"response": {"alarm_id": "5bff-dd80"}, "exception": None}                 # the ground truth's response
    assert json.loads(env.step(ToolCall("NoSuchApi", {})))["exception"] == "API NoSuchApi not found"
    assert "Failed to parse" in json.loads(env.step(ToolCall("AddAlarm", {}, error="bad JSON")))["exception"]
    assert "unexpected keyword argument 'when'" in json.loads(env.step(ToolCall("AddAlarm", {"when": 1})))["exception"]
    assert [t["function"]["name"] for t in env.tools()] == ["AddAlarm"]          # api_mode exact
    logged_out = ToolTalkEnv()
    logged_out.reset(_row(rows, "tooltalk/AccountTools-Alarm-Calendar-AddAlarm-0/1"))
    assert json.loads(logged_out.step(ToolCall("AddAlarm", {"time": "08:00:00"})))["exception"] == \
        "User is not logged in"


def test_api_modes_and_prompt_size_limit():
    conv = read_conversation(next(p for p in (tooltalk_modules()["root"] / "data" / "tooltalk").glob("*.json")))
    exact, suite, every = (json.loads(conversation_rows(conv, m)[0]["api_names"]) for m in ("exact", "suite", "all"))
    assert set(exact) <= set(suite) <= set(every) and len(every) == 28 and set(exact) == set(conv["apis_used"])
    small = load_tooltalk("agent", "train", 10 ** 6, {"tooltalk": {"api_mode": "exact", "max_chars": 1500}})
    assert 0 < len(small) < 158
    assert api_schema("AddAlarm")["function"]["parameters"]["required"] == ["time"]


def test_history_needs_the_mode_and_renders_like_sft(rows):
    s = _row(rows, "tooltalk/AccountTools-Alarm-Calendar-AddAlarm-0/3")
    assert json.loads(s["history"])
    with pytest.raises(ValueError, match="needs the mode"):
        prompt_messages(s)
    think = render_prompt(prompt_messages(s, "think_high"), "think_high")
    assert "<|assistant|><think></think>Ok, I can help" in think        # an empty reasoning, as SFT writes it


def test_free_text_similarity_without_a_hub_model():
    assert text_similarity("Buy milk", "buy milk") == pytest.approx(1.0)
    assert text_similarity("", "milk") < 0.8 and text_similarity(None, "milk") == 0.0
    assert text_similarity("pick up the dry cleaning", "buy milk") < 0.5
    # the stand-in module offers every function ToolTalk's utils defines at top level (its file, not imported)
    src = (tooltalk_modules()["root"] / "apis" / "utils.py").read_text()
    defined = {n.name for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}
    assert defined == set(UTILS_FUNCTIONS)
    code = ("import sys; from rewards.envs.tooltalk import tooltalk_modules as m; m(); "
            "import tooltalk.apis.email as e; assert e.semantic_str_compare.__module__ == 'rewards.envs.tooltalk'; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_rows_are_one_line_errors(rows):
    s = dict(_row(rows, "tooltalk/AddAlarm-easy/1"))
    row = {**s, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    with pytest.raises(Exception, match=r"api_names\[0\]: unknown ToolTalk API 'Nope'"):
        read_row({**row, "api_names": json.dumps(["Nope"])}, "agent", "messages")
    spec = json.loads(s["tooltalk"])
    with pytest.raises(Exception, match="tooltalk.metadata: expected an object with a timestamp"):
        read_row({**row, "tooltalk": json.dumps({**spec, "metadata": {}})}, "agent", "messages")
    with pytest.raises(RowError, match="tasks.math: source: tooltalk gives tool-use rows of the agent domain"):
        load_tooltalk("math", "train", 1, ALL)
    with pytest.raises(RowError, match="unknown ToolTalk subset 'hard'"):
        load_tooltalk("agent", "train", 1, {"tooltalk": {"subsets": ["hard"]}})


def test_missing_package_is_one_line(monkeypatch):
    import importlib.util

    import rewards.envs.tooltalk as tt

    monkeypatch.setattr(tt, "_MODULES", None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tooltalk" else real(name, *a))
    with pytest.raises(ToolTalkMissing, match=r"pip install --no-deps nvidia-tooltalk==26.3"):
        tooltalk_modules()
    with pytest.raises(RowError, match="tasks.agent: tooltalk: needs the nvidia-tooltalk package"):
        load_tooltalk("agent", "train", 1, ALL)


def test_recipe_source_options_and_the_mixed_agent_source():
    from pydantic import ValidationError

    from rewards.tasks import load_tasks
    from train.config import TaskSource

    src = TaskSource.model_validate({"source": ["bfcl", "tooltalk"], "bfcl": {"categories": ["simple_python"]},
                                     "tooltalk": {"api_mode": "exact", "max_chars": 1600}})
    rows = load_tasks("agent", "test", 6, 0, src.model_dump())
    assert [r["env"] for r in rows] == ["bfcl", "tooltalk"] * 3
    assert all(r["origin"]["source"].startswith(("bfcl:", "tooltalk:")) for r in rows)
    for bad, field in (({"api_mode": "some"}, "api_mode"), ({"subsets": []}, "subsets"), ({"max_chars": 5}, "max_chars"),
                       ({"apis": "all"}, "apis")):
        with pytest.raises(ValidationError, match=field):
            TaskSource.model_validate({"source": "tooltalk", "tooltalk": bad})
    with pytest.raises(ValidationError, match="tooltalk: options of source: tooltalk"):
        TaskSource.model_validate({"source": "bfcl", "tooltalk": {}})
