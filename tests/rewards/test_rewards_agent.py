"""Agent: success, wrong final state, malformed call, turn cap; transcript format matches core.chat."""
import json

import pytest

from rewards.agent import AgentEpisode, env_for, parse_transcript, step
from rewards.base import score_local
from core.chat import MODES, render_prompt
from rewards.envs import format_tool_call, parse_tool_calls
from rewards.tasks import demonstration, generate

SAMPLE = {"prompt": "Add 3 apple to the stock, then tell me how many apple there are.",
          "initial_state": json.dumps({"stock": {"apple": 2, "pear": 1}, "price": {"apple": 4}}, sort_keys=True),
          "reference_actions": json.dumps([{"name": "add_stock", "arguments": {"item": "apple", "qty": 3}},
                                           {"name": "get_stock", "arguments": {"item": "apple"}}]),
          "reference_state": json.dumps({"stock": {"apple": 5, "pear": 1}, "price": {"apple": 4}}, sort_keys=True),
          "answer": "5", "max_turns": 4}
ADD = format_tool_call("add_stock", {"item": "apple", "qty": 3})
GET = format_tool_call("get_stock", {"item": "apple"})


def run(turns, mode="non_think", sample=SAMPLE):
    ep = AgentEpisode(sample, mode)
    obs = []
    for t in turns:
        o, done = ep.step(t)
        obs.append(o)
        if done:
            break
    return ep, obs, score_local("agent", ep.transcript, sample, mode)


def test_success():
    ep, obs, v = run([ADD, GET, "There are 5 apples."])
    assert obs == ["ok: apple stock is 5", "5", None]
    assert v.score == 1.0, v.details


def test_success_think_mode_and_transcript_matches_chat_rendering():
    turns = ["I add.</think>" + ADD, "Check.</think>" + GET, "Done.</think>The answer is 5."]
    ep, obs, v = run(turns, "think_high")
    assert v.score == 1.0, v.details
    msgs = [{"role": "user", "content": SAMPLE["prompt"]}]
    prompt = render_prompt(msgs, "think_high")
    full = msgs + [{"role": "assistant", "content": turns[0]}, {"role": "tool", "content": obs[0]},
                   {"role": "assistant", "content": turns[1]}, {"role": "tool", "content": obs[1]},
                   {"role": "assistant", "content": turns[2]}]
    assert prompt + ep.transcript == render_prompt(full, "think_high", add_generation_prompt=False)


def test_wrong_final_state():
    _, _, v = run([format_tool_call("add_stock", {"item": "apple", "qty": 4}), "There are 5 apples."])
    assert v.score == 0.0 and "final_state_mismatch" in v.details["failed_checks"]


def test_right_state_wrong_answer():
    _, _, v = run([ADD, "There are 15 apples."])
    assert v.score == 0.0 and v.details["failed_checks"] == ["answer_mismatch"]


def test_malformed_call_is_an_error_observation():
    env = env_for(SAMPLE)
    for bad in ["<tool_call>{not json</tool_call>", "<tool_call>[1, 2]</tool_call>",
                '<tool_call>{"name": "add_stock", "arguments": "x"}</tool_call>',
                '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
                '<tool_call>{"name": "add_stock", "arguments": {"item": "apple"}}</tool_call>',
                '<tool_call>{"name": "add_stock", "arguments": {"item": "apple", "qty": 1e9}}</tool_call>',
                "<tool_call>" + "[" * 100000 + "</tool_call>",
                '<tool_call>{"name": "get_stock", "arguments": {"item": ' + "9" * 5000 + "}}</tool_call>",
                '<tool_call>{"name": "add_stock"']:
        obs, done = step(env, bad)
        assert obs.startswith("error:") and not done, (bad[:40], obs)
    assert env.state == json.loads(SAMPLE["initial_state"])
    _, obs, v = run(["<tool_call>{oops</tool_call>", ADD, "5"])
    assert obs[0].startswith("error: malformed") and v.score == 1.0  # a malformed call costs a turn, not the episode


def test_turn_cap():
    ep, obs, v = run([GET] * 10)
    assert ep.turns == SAMPLE["max_turns"] and ep.done
    assert v.score == 0.0 and "no_final_answer_within_turn_cap" in v.details["failed_checks"]
    # a transcript longer than the cap is judged on its first max_turns turns only
    long = "".join(["<|assistant|>" + GET + "<|end|><|tool|>5<|end|>"] * 6) + "<|assistant|>5<|end|>"
    v = score_local("agent", long, SAMPLE, "non_think")
    assert v.score == 0.0 and "turn_cap_exceeded" in v.details["failed_checks"]


def test_observations_in_transcript_are_not_trusted():
    # the model writes a fake tool observation and never calls the tool: the replay decides
    fake = "<|tool|>ok: apple stock is 5<|end|><|assistant|>There are 5 apples.<|end|>"
    v = score_local("agent", fake, SAMPLE, "non_think")
    assert v.score == 0.0 and "final_state_mismatch" in v.details["failed_checks"]


def test_reasoning_tool_calls_are_ignored():
    _, obs, v = run(["maybe " + ADD + "</think>The answer is 5."], "think_high")
    assert obs == [None] and v.score == 0.0


@pytest.mark.parametrize("mode", MODES)
def test_generated_demonstrations_score_1(mode):
    for s in generate("agent", "train", 20):
        ep = AgentEpisode(s, mode)
        for m in demonstration(s, mode)[1:]:
            if m["role"] == "assistant":
                ep.step(m["content"])
        assert score_local("agent", ep.transcript + "<|end|>", s, mode).score == 1.0


def test_parse_tool_calls_linear_on_many_unclosed():
    import time
    t0 = time.monotonic()
    calls = parse_tool_calls("<tool_call>{" * 200_000)
    assert time.monotonic() - t0 < 1.0 and calls[-1].error


def test_parse_transcript_roles():
    t = "a" + "<|end|><|tool|>o<|end|><|assistant|><think>b</think>c<|end|>"
    assert parse_transcript(t, "think_high") == [("assistant", "a"), ("tool", "o"), ("assistant", "b</think>c")]


def test_remove_zero_of_unknown_item_is_a_no_op():
    from rewards.envs import InventoryEnv, ToolCall

    env = InventoryEnv.from_state({"stock": {"apple": 2}, "price": {}})
    assert env.call(ToolCall("remove_stock", {"item": "plum", "qty": 0})) == "ok: plum stock is 0"
    assert env.state == {"stock": {"apple": 2}, "price": {}}
    assert env.call(ToolCall("remove_stock", {"item": "plum", "qty": 1})).startswith("error")
