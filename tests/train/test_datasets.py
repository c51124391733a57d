"""SFT from TRL's dataset formats (train/datasets.py, train/data.py): each format becomes the project's conversation,
tokenized by the project's segment encoding (assistant-only loss, the mode's prefill), in the modes its reasoning
decides; bad rows are one line naming source, row and field."""
import json
from pathlib import Path

import pytest

from core.chat import END, END_THINK, MODES, render_prompt
from rewards.tasks import demonstration, generate, load_tasks, system_message
from rollout.encoding import encode_conversation
from train.data import sft_examples
from train.datasets import assistant_body, conversation

ROOT = Path(__file__).resolve().parents[2]
MODES_ = list(MODES)


pytestmark = pytest.mark.usefixtures("datasets_cache")   # tests/conftest.py


@pytest.fixture(scope="module")
def tok():
    from rewards.tasks import corpus
    from train.bootstrap import train_tokenizer

    return train_tokenizer(corpus(0, 10), 400)


def _rows(tmp_path, domain, rows, name="d.jsonl", **kw):
    f = tmp_path / name
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_tasks(domain, "train", 100, 0, {"source": "json", "data_files": str(f), **kw})


def _assistant_text(tok, ex) -> str:
    """The tokens that carry loss, decoded."""
    return tok.decode([i for i, m in zip(ex.ids, ex.loss_mask) if m])


USER = {"role": "user", "content": "What is 2+3?"}


def test_messages_with_reasoning_content(tmp_path, tok):
    (s,) = _rows(tmp_path, "math", [{"messages": [
        USER, {"role": "assistant", "content": "The answer is \\boxed{5}.", "reasoning_content": "2+3=5"}],
        "answer": "5"}])
    ex = sft_examples(tok, [s], MODES_, 256)
    assert [e.mode for e in ex] == ["think_high", "think_max"]            # reasoning: the think modes only
    for e in ex:
        assert _assistant_text(tok, e) == "2+3=5</think>The answer is \\boxed{5}." + END
        ids, mask = encode_conversation(tok, [USER, {"role": "assistant", "content":
                                                     "2+3=5</think>The answer is \\boxed{5}."}], e.mode)
        assert (e.ids, e.loss_mask) == (ids, mask)                          # the project's own segment encoding


def test_messages_with_a_think_block_equal_reasoning_content(tmp_path, tok):
    block = [{"messages": [USER, {"role": "assistant", "content": "<think>\n2+3=5\n</think>\n\nThe answer is 5."}],
              "answer": "5"},
             {"messages": [USER, {"role": "assistant", "content": "2+3=5</think>The answer is 5."}], "answer": "5"}]
    field = [{"messages": [USER, {"role": "assistant", "content": "The answer is 5.", "reasoning_content": "2+3=5"}],
              "answer": "5"}]
    a, b = sft_examples(tok, _rows(tmp_path, "math", block), MODES_, 256)[::2]
    (c, _) = sft_examples(tok, _rows(tmp_path, "math", field, "f.jsonl"), MODES_, 256)
    assert a.ids == b.ids == c.ids and a.loss_mask == c.loss_mask


def test_messages_without_reasoning_train_non_think_and_sft_modes_all(tmp_path, tok):
    row = {"messages": [USER, {"role": "assistant", "content": "The answer is 5."}], "answer": "5"}
    (e,) = sft_examples(tok, _rows(tmp_path, "math", [row]), MODES_, 256)
    assert e.mode == "non_think" and _assistant_text(tok, e) == "The answer is 5." + END
    every = sft_examples(tok, _rows(tmp_path, "math", [row], sft_modes="all"), MODES_, 256)
    assert [x.mode for x in every] == MODES_
    assert _assistant_text(tok, every[1]) == END_THINK + "The answer is 5." + END   # empty reasoning
    with pytest.raises(ValueError, match=r"^tasks.math: json:\S+: no row trains the modes think_high") as err:
        sft_examples(tok, _rows(tmp_path, "math", [row]), ["think_high"], 256)
    assert "\n" not in str(err.value)


def test_tool_calls_and_tool_messages(tmp_path, tok):
    state = json.dumps({"stock": {"apple": 2}, "price": {}})
    msgs = [{"role": "user", "content": "Add 3 apples, then tell me the stock."},
            {"role": "assistant", "content": "", "reasoning_content": "I add them.", "tool_calls": [
                {"type": "function", "function": {"name": "add_stock", "arguments": '{"item": "apple", "qty": 3}'}}]},
            {"role": "tool", "content": "ok: apple stock is 5"},
            {"role": "assistant", "content": "There are 5.", "reasoning_content": "Done."}]
    (s,) = _rows(tmp_path, "agent", [{"messages": msgs, "initial_state": state, "answer": "5"}])
    conv = conversation(s)
    call = {"name": "add_stock", "arguments": {"item": "apple", "qty": 3}}
    body = assistant_body("", [call])               # the project's tool-call format, whatever it is
    m = conv.messages("think_high")
    assert m[0]["tools"] and render_prompt(m[:1], "non_think", False) == \
        render_prompt([{"role": "system", "content": system_message("agent")}], "non_think", False)  # as RL prompts
    assert m[2] == {"role": "assistant", "content": "I add them." + END_THINK + body}
    assert m[3] == {"role": "tool", "content": "ok: apple stock is 5"}
    assert conv.messages("non_think")[2]["content"] == body
    from core import chat

    if hasattr(chat, "format_tool_calls"):
        assert chat.format_tool_calls([call]) in body
    else:
        from rewards.envs import format_tool_call

        assert body == format_tool_call("add_stock", {"item": "apple", "qty": 3})
    e = sft_examples(tok, [s], ["think_high"], 512)[0]
    loss = _assistant_text(tok, e)
    assert "I add them." in loss and "Done." in loss and "ok: apple stock is 5" not in loss   # tool output: no loss


def test_trl_tools_column_rides_on_the_system_message(tmp_path, tok):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "integer"}}, "required": ["a"]}}}]
    (s,) = _rows(tmp_path, "math", [{"messages": [USER, {"role": "assistant", "content": "5"}], "answer": "5",
                                     "tools": json.dumps(tools)}])
    m = conversation(s).messages("non_think")
    assert m[0] == {"role": "system", "content": "", "tools": tools} and m[1] == USER
    assert sft_examples(tok, [s], MODES_, 512)


def test_prompt_completion_conversational_and_plain(tmp_path, tok):
    code = generate("code", "train", 1, 0)[0]
    rows = [{"prompt": [USER], "completion": [{"role": "assistant", "content": "5", "reasoning_content": "2+3"}],
             "answer": "5"}]
    (e1, e2) = sft_examples(tok, _rows(tmp_path, "math", rows), MODES_, 256)
    assert (e1.mode, _assistant_text(tok, e1)) == ("think_high", "2+3" + END_THINK + "5" + END)
    plain = _rows(tmp_path, "code", [{k: code[k] for k in ("prompt", "canonical_solution", "test", "entry_point")}],
                  "he.jsonl", fields={"completion": "canonical_solution"})
    (e,) = sft_examples(tok, plain, MODES_, 256)
    assert e.mode == "non_think" and _assistant_text(tok, e) == code["canonical_solution"] + END
    ids, _ = encode_conversation(tok, [{"role": "user", "content": code["prompt"]},
                                       {"role": "assistant", "content": code["canonical_solution"]}], "non_think")
    assert e.ids == ids


def test_prompt_only_rows_cannot_train_sft(tmp_path, tok):
    rows = _rows(tmp_path, "math", [{"prompt": "2+2?", "answer": "4"}])
    with pytest.raises(ValueError) as err:
        sft_examples(tok, rows, MODES_, 256)
    assert str(err.value).startswith("tasks.math: json:") and "row 0: format: prompt_only rows have no demonstration" \
        in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("assistant,part", [
    ({"role": "assistant", "content": "a</think>b</think>c"}, "row 1: messages[1].content: expected one <think>"),
    ({"role": "assistant", "content": "x<think>r</think>a"}, "row 1: messages[1].content: text before <think>"),
    ({"role": "assistant", "content": "<think>r</think>a", "reasoning_content": "r"},
     "row 1: messages[1]: both reasoning_content and a think block"),
    ({"role": "assistant", "content": "a", "reasoning_content": 3}, "row 1: messages[1].reasoning_content: expected"),
    ({"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": 7}}]},
     "row 1: messages[1].tool_calls: tool_calls[0]['function']['name'] must be a string"),
    ({"role": "assistant", "content": None}, "row 1: messages[1]: an assistant message with no content"),
])
def test_bad_conversation_rows_are_one_line(tmp_path, tok, assistant, part):
    good = {"messages": [USER, {"role": "assistant", "content": "5"}], "answer": "5"}
    rows = _rows(tmp_path, "math", [good, {"messages": [USER, assistant], "answer": "5"}])
    with pytest.raises(ValueError) as err:
        sft_examples(tok, rows, MODES_, 256)
    msg = str(err.value)
    assert msg.startswith(f"tasks.math: json:{tmp_path / 'd.jsonl'} row 1: ") and part in msg and "\n" not in msg


def test_trl_chat_template_renders_the_same_text(tmp_path, tok):
    """TRL's ``apply_chat_template`` over our conversation, with the tokenizer's template, gives the text the
    segment encoding tokenized: the conversation form is the chat protocol's."""
    from trl.data_utils import maybe_apply_chat_template

    (s,) = _rows(tmp_path, "math", [{"messages": [
        {"role": "system", "content": "Be brief."}, USER,
        {"role": "assistant", "content": "5", "reasoning_content": "2+3=5"}], "answer": "5"}])
    conv = conversation(s)
    for mode in ("think_high", "think_max"):
        text = maybe_apply_chat_template({"messages": conv.messages(mode)}, tok, mode=mode)["text"]
        ids, _ = encode_conversation(tok, conv.messages(mode), mode)
        assert tok.decode(ids) == text


def test_shipped_sft_rows_are_the_generators_demonstrations(tok):
    """rewards/data/sft_<domain>.jsonl read back through TRL's formats gives, token for token, what SFT on the
    generated tasks trains on (bench/make_task_data.py mixes the formats row by row)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_task_data", ROOT / "bench" / "make_task_data.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    mode_of = {"reasoning_content": "think_max", "think_block": "think_high", "no_reasoning": "non_think",
               "prompt_completion": "think_high", "prompt_completion_plain": "non_think"}
    for d in ("math", "code", "agent", "instruct"):
        rows = load_tasks(d, "train", 10, 0, {"source": "json", "data_files": str(ROOT / f"rewards/data/sft_{d}.jsonl")})
        tasks = mk._tasks(d, mk.SFT_SIZES[d])
        for i, (row, task) in enumerate(zip(rows, tasks)):
            mode = mode_of[mk.STYLES[i % len(mk.STYLES)]]
            (e,) = [x for x in sft_examples(tok, [row], MODES_, 4096) if x.mode == mode]
            sys = system_message(d)
            ids, mask = encode_conversation(tok, ([{"role": "system", "content": sys}] if sys else [])
                                            + demonstration(task, mode), mode)
            assert (e.ids, e.loss_mask) == (ids, mask), (d, i, mode)


@pytest.mark.parametrize("domain", ["math", "instruct"])
def test_shipped_demonstrations_pass_their_own_verifier(domain):
    from rewards.base import score_local

    rows = load_tasks(domain, "train", 40, 0, {"source": "json",
                                               "data_files": str(ROOT / f"rewards/data/sft_{domain}.jsonl")})
    for s in rows:
        conv = conversation(s)
        mode = conv.modes(MODES_, "by_reasoning")[0]
        completion = [m for m in conv.messages(mode) if m["role"] == "assistant"][-1]["content"]
        v = score_local(domain, completion, s, mode)
        assert v.score == 1.0, (s["id"], mode, v.details)
