"""Task rows from `datasets` sources (rewards/tasks/rows.py): TRL's formats from jsonl and parquet, column mapping,
the per-domain verifier spec of RL prompt rows, the shipped files, and one-line errors naming source, row and field."""
import json
from pathlib import Path

import pytest

from rewards.tasks import generate, load_tasks
from rewards.tasks.rows import AGENT_ENVS, RowError

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "rewards" / "data"


pytestmark = pytest.mark.usefixtures("datasets_cache")   # tests/conftest.py


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _src(path, **kw) -> dict:
    return {"source": "parquet" if str(path).endswith(".parquet") else "json", "data_files": str(path), **kw}


def _load(domain, path, n=100, split="train", **kw):
    return load_tasks(domain, split, n, 0, _src(path, **kw))


def _one_line_error(domain, path, *parts, **kw):
    with pytest.raises(ValueError) as e:
        _load(domain, path, **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg
    return msg


# ------------------------------------------------------------------------------------------------ RL prompt rows
def test_math_prompt_rows(tmp_path):
    f = _jsonl(tmp_path / "m.jsonl", [
        {"prompt": "What is 2+3?", "answer": "5"},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1/2+1/2?"}],
         "answer": "1"},
    ])
    a, b = _load("math", f)
    assert (a["prompt"], a["answer"], a["domain"], a["origin"]["format"]) == ("What is 2+3?", "5", "math",
                                                                              "prompt_only")
    assert (b["prompt"], b["system"], b["answer"]) == ("What is 1/2+1/2?", "Be brief.", "1")
    assert a["example"] == {"prompt": "What is 2+3?"} and a["id"] == "math/train/0"
    from rewards.base import score_local                            # the sample is what the verifier reads

    assert score_local("math", "The answer is \\boxed{5}.", a, "non_think").score == 1.0


def test_math_answer_as_a_number_and_column_mapping(tmp_path):
    f = _jsonl(tmp_path / "gsm.jsonl", [{"question": "Tom has 3 pens and gets 4. How many?", "final": 7}])
    (s,) = _load("math", f, fields={"prompt": "question", "answer": "final"})
    assert (s["prompt"], s["answer"], s["question"]) == ("Tom has 3 pens and gets 4. How many?", "7",
                                                         "Tom has 3 pens and gets 4. How many?")


def test_code_rows_humaneval_style(tmp_path):
    rows = [{k: s[k] for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}
            for s in generate("code", "train", 3, 0)]
    f = _jsonl(tmp_path / "he.jsonl", rows)
    plain = _load("code", f)
    assert [s["origin"]["format"] for s in plain] == ["prompt_only"] * 3
    assert plain[0]["prompt"] == rows[0]["prompt"] and plain[0]["entry_point"] == rows[0]["entry_point"]
    # the same rows as prompt-completion demonstrations: map the solution to ``completion``
    pc = _load("code", f, fields={"completion": "canonical_solution"})
    assert pc[0]["origin"]["format"] == "prompt_completion"
    assert pc[0]["example"] == {"prompt": rows[0]["prompt"], "completion": rows[0]["canonical_solution"]}


def test_instruct_rows(tmp_path):
    f = _jsonl(tmp_path / "if.jsonl", [
        {"prompt": "Write about rain. Do not use any commas.", "instruction_id_list": ["punctuation:no_comma"],
         "kwargs": [{"num_words": None}]},        # IFEval's parquet: every argument name, null where unused
        {"prompt": "Write about cats in at least 3 sentences.",
         "instruction_id_list": '["length_constraints:number_sentences"]',
         "kwargs": '[{"relation": "at least", "num_sentences": 3}]'},   # JSON strings, as the generators store them
    ])
    a, b = _load("instruct", f)
    assert a["kwargs"] == [{}] and a["instruction_id_list"] == ["punctuation:no_comma"]
    assert b["kwargs"] == [{"relation": "at least", "num_sentences": 3}]
    from rewards.base import score_local

    assert score_local("instruct", "Rain falls. It is wet. It is grey.", b, "non_think").score == 1.0


def test_agent_rows_tool_call_ground_truth(tmp_path):
    state = {"stock": {"apple": 2}, "price": {}}
    calls = [{"type": "function", "function": {"name": "add_stock", "arguments": '{"item": "apple", "qty": 3}'}},
             {"name": "get_stock", "arguments": {"item": "apple"}}]
    f = _jsonl(tmp_path / "ag.jsonl", [{"prompt": "Add 3 apples and tell me the stock.", "tool_calls": calls,
                                        "initial_state": state, "answer": 5}])
    (s,) = _load("agent", f)
    assert s["tool_calls"] == [{"name": "add_stock", "arguments": {"item": "apple", "qty": 3}},
                               {"name": "get_stock", "arguments": {"item": "apple"}}]
    assert s["env"] == "inventory" and "inventory" in AGENT_ENVS
    assert json.loads(s["reference_state"]) == {"stock": {"apple": 5}, "price": {}}
    assert json.loads(s["reference_actions"]) == s["tool_calls"] and s["answer"] == "5" and s["max_turns"] == 4


def test_agent_messages_row_reads_the_expected_calls_from_the_conversation(tmp_path):
    msgs = [{"role": "user", "content": "Set the price of fig to 4."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "set_price", "arguments": {"item": "fig", "price": 4}}}]},
            {"role": "tool", "content": "ok: fig price is 4"},
            {"role": "assistant", "content": "Done."}]
    f = _jsonl(tmp_path / "ag.jsonl", [{"messages": msgs, "initial_state": json.dumps({"stock": {}, "price": {}})}])
    (s,) = _load("agent", f)
    assert s["tool_calls"] == [{"name": "set_price", "arguments": {"item": "fig", "price": 4}}]
    assert json.loads(s["reference_state"]) == {"stock": {}, "price": {"fig": 4}}
    assert s["prompt"] == "Set the price of fig to 4." and s["origin"]["format"] == "messages"


# ------------------------------------------------------------------------------------------------ sources
def test_parquet_source_with_struct_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "Add 1 pear.", "tool_calls": [{"name": "add_stock", "arguments": {"item": "pear", "qty": 1}}],
             "initial_state": '{"stock": {}, "price": {}}'},
            {"prompt": "Price kiwi at 2.", "tool_calls": [{"name": "set_price",
                                                           "arguments": {"item": "kiwi", "price": 2}}],
             "initial_state": '{"stock": {}, "price": {}}'}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ag.parquet")   # arguments: a struct of qty AND price
    a, b = _load("agent", tmp_path / "ag.parquet")
    assert a["tool_calls"][0]["arguments"] == {"item": "pear", "qty": 1}  # the other row's null key is dropped
    assert b["tool_calls"][0]["arguments"] == {"item": "kiwi", "price": 2}


def test_split_syntax_and_absolute_row_numbers(tmp_path):
    rows = [{"prompt": f"What is {i}+1?", "answer": str(i + 1)} for i in range(10)]
    rows[7] = {"prompt": "What is 7+1?"}
    f = _jsonl(tmp_path / "m.jsonl", rows)
    held = _load("math", f, n=100, split="test", eval_split="train[:3]", train_split="train[3:]")
    assert [s["answer"] for s in held] == ["1", "2", "3"]
    assert len(_load("math", f, n=4, train_split="train[3:]")) == 4
    _one_line_error("math", f, "row 7: answer: missing", train_split="train[3:]")   # the file's row, not the slice's


def test_shipped_files_load_and_are_reproducible(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_task_data", ROOT / "bench" / "make_task_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for p in mod.build(tmp_path):
        assert (DATA / p.name).read_bytes() == p.read_bytes(), f"{p.name} is stale: run bench/make_task_data.py"
    for name, domain in [("sft_math", "math"), ("sft_code", "code"), ("sft_agent", "agent"),
                         ("sft_instruct", "instruct"), ("rl_math", "math"), ("rl_code", "code")]:
        kw = {"train_split": "train[32:]", "eval_split": "train[:32]"}
        train, test = _load(domain, DATA / f"{name}.jsonl", 10_000, **kw), \
            _load(domain, DATA / f"{name}.jsonl", 10_000, "test", **kw)
        assert len(test) == 32 and len(train) >= 64
        assert not {s["prompt"] for s in test} & {s["prompt"] for s in train}
    fmts = {s["origin"]["format"] for s in _load("math", DATA / "sft_math.jsonl", 10_000)}
    assert fmts == {"messages", "prompt_completion"}


def test_generated_default_unchanged():
    assert load_tasks("math", "train", 4, 3) == generate("math", "train", 4, 3)
    assert load_tasks("code", "test", 2, 0, {"source": "generated", "format": "generated"}) == \
        generate("code", "test", 2, 0)


# ------------------------------------------------------------------------------------------------ bad rows
@pytest.mark.parametrize("domain,row,parts", [
    ("math", {"prompt": "1+1?"}, ["row 1: answer: missing"]),
    ("math", {"prompt": "1+1?", "answer": ["2"]}, ["row 1: answer: expected a string or a number, got list"]),
    ("math", {"prompt": ["1+1?"], "answer": "2"}, ["row 1: prompt[0]: expected a message object, got str"]),
    ("math", {"messages": [{"role": "user", "content": "1+1?"}], "answer": "2"},
     ["row 1: messages: no assistant message"]),
    ("math", {"messages": [{"role": "bot", "content": "hi"}], "answer": "2"}, ["row 1: messages[0].role: role 'bot'"]),
    ("code", {"prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 1\n"},
     ["row 1: entry_point: missing"]),
    ("code", {"prompt": "Write f.", "test": "def check(c):\n    pass\n", "entry_point": "f"},
     ["row 1: prompt: not Python"]),
    ("code", {"prompt": "def f(x):\n", "test": "assert f(1) == 1", "entry_point": "f"},
     ["row 1: test: defines no check(candidate)"]),
    ("instruct", {"prompt": "Write.", "instruction_id_list": ["no:such"]},
     ["row 1: instruction_id_list[0]: unknown IFEval instruction 'no:such'"]),
    ("instruct", {"prompt": "Write.", "instruction_id_list": ["length_constraints:number_words"], "kwargs": [{}]},
     ["row 1: kwargs[0]: length_constraints:number_words: missing argument"]),
    ("instruct", {"prompt": "Write.", "instruction_id_list": "punctuation:no_comma"},
     ["row 1: instruction_id_list: expected a list of IFEval instruction ids (or its JSON), got a string"]),
    ("agent", {"prompt": "Sell.", "tool_calls": [{"name": "sell", "arguments": {}}],
               "initial_state": '{"stock": {}, "price": {}}'}, ["row 1: tool_calls[0]: the inventory answers"]),
    ("agent", {"prompt": "Add.", "tool_calls": [{"name": "add_stock", "arguments": {"item": "a", "qty": 1}}]},
     ["row 1: initial_state: missing"]),
    ("agent", {"prompt": "Add.", "tool_calls": [{"function": {"arguments": "{}"}}], "initial_state": "{}"},
     ["row 1: tool_calls[0].function.name: missing"]),
    ("agent", {"prompt": "Add.", "tool_calls": [], "env": "teleport"}, ["row 1: env: unknown environment 'teleport'"]),
    ("agent", {"prompt": "Call.", "env": "bfcl"}, ["row 1: functions: missing"]),
])
def test_bad_row_is_one_line_naming_source_row_and_field(tmp_path, domain, row, parts):
    good = {"math": {"prompt": "2+2?", "answer": "4"},
            "code": {k: v for k, v in generate("code", "train", 1, 0)[0].items() if k in ("prompt", "test",
                                                                                         "entry_point")},
            "instruct": {"prompt": "Write.", "instruction_id_list": ["punctuation:no_comma"]},
            "agent": {"prompt": "Hi.", "tool_calls": [], "initial_state": '{"stock": {}, "price": {}}'}}[domain]
    f = _jsonl(tmp_path / "bad.jsonl", [good, row])
    msg = _one_line_error(domain, f, f"tasks.{domain}: json:{f}", *parts)
    assert msg.startswith(f"tasks.{domain}: json:{f} row 1: ")


def test_bad_sources_are_one_line(tmp_path):
    f = _jsonl(tmp_path / "m.jsonl", [{"q": "1+1?", "answer": "2"}])
    _one_line_error("math", tmp_path / "none.jsonl", "tasks.math: json:", "none.jsonl: data_files: no such file")
    _one_line_error("math", f, "fields.prompt: no column 'question' (columns: q, answer)", fields={"prompt": "question"})
    _one_line_error("math", f, "row 0: messages: missing: a row needs messages, or prompt")
    _one_line_error("math", f, "format: unknown 'chat'", format="chat")
    _one_line_error("math", f, "cannot load split 'test'", split="test")   # one file is split train only
    _one_line_error("math", f, "row 0: prompt: missing", format="prompt_only")
    with pytest.raises(ValueError, match=r"^tasks.math.format: generated needs source: generated"):
        load_tasks("math", "train", 1, 0, {**_src(f), "format": "generated"})


def test_a_json_looking_string_in_a_mixed_column_is_explained(tmp_path):
    f = _jsonl(tmp_path / "m.jsonl", [{"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"},
                                      {"prompt": "42", "answer": "42"}])   # read back as the number 42
    _one_line_error("math", f, "row 1: prompt: expected a string or a list of messages, got int",
                    "keep one type per column")


def test_recipe_task_source_fields_are_checked():
    from pydantic import ValidationError

    from train.config import TaskSource

    assert TaskSource(source="json", data_files="x.jsonl", format="messages", sft_modes="all").format == "messages"
    for kw, part in [({"format": "messages"}, "format: messages reads a datasets source"),
                     ({"source": "json", "format": "generated"}, "format: generated needs source: generated"),
                     ({"sft_modes": "all"}, "sft_modes: applies to datasets rows"),
                     ({"source": "json", "format": "chat"}, "format")]:
        with pytest.raises(ValidationError, match=part):
            TaskSource(**kw)
