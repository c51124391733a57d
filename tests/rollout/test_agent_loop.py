"""Multi-turn tool episodes: append-only token ids (never re-tokenized), a loss mask over model tokens only, one
scripted episode per environment, and the rollout loop and the verifier agreeing on which calls count.

A scripted engine replays fixed turns and emits each turn's ids as a *non-canonical* split of its text (piece by
piece), so any re-tokenization of earlier turns would change the ids.
"""
import json

import pytest
from transformers import AutoTokenizer

from core.chat import (END, END_INVOKE, END_PARAM, END_TOOL_CALLS, INVOKE, PARAM, STRING_VALUE, TOOL_CALLS,
                       format_tool_call, format_tool_calls)
from rewards.agent import turn_tool_calls
from rewards.base import score_local
from rewards.envs import InventoryEnv
from rewards.tasks import generate as gen_tasks
from rewards.tasks.agent import bfcl_row, python_row
from rollout.agent_loop import run_episodes, transcript
from rollout.encoding import encode_prompt, encode_tool_results, generation_prompt
from rollout.engine import Completion, SamplingParams


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


def _pieces_ids(tok, pieces: list[str]) -> list[int]:
    return [i for p in pieces for i in tok(p, add_special_tokens=False)["input_ids"]]


class ScriptedEngine:
    """Returns the next scripted turn of the episode whose prompt prefixes the request; records every request."""

    name = "scripted"

    def __init__(self, tok, prompts, scripts):
        self.tok, self.prompts, self.scripts = tok, prompts, scripts
        self.turn = [0] * len(prompts)
        self.requests: list[tuple[int, list[int]]] = []
        self.emitted: list[list[tuple[list[int], list[float]]]] = [[] for _ in prompts]

    def _episode(self, ids):
        hits = [i for i, p in enumerate(self.prompts) if ids[:len(p)] == p]
        assert len(hits) == 1
        return hits[0]

    def generate(self, prompts, params):
        out = []
        for ids in prompts:
            e = self._episode(ids)
            self.requests.append((e, list(ids)))
            pieces = self.scripts[e][self.turn[e]]
            self.turn[e] += 1
            tids = _pieces_ids(self.tok, pieces)
            lps = [-0.01 * (k + 1) - e for k in range(len(tids))]
            self.emitted[e].append((tids, lps))
            out.append([Completion(prompt_ids=list(ids), token_ids=tids, logprobs=lps,
                                   text=self.tok.decode(tids, skip_special_tokens=False),
                                   finish_reason="stop" if tids[-1] == self.tok.eos_token_id else "length")])
        return out

    def load_weights(self, state_dict):
        return 0.0

    def close(self):
        pass


def _call_pieces(name, item, why="I ch|eck."):
    """A DSML call split mid-word, so the pieces' ids differ from the whole text's canonical tokenization."""
    reasoning = why.split("|") + ["</think>"] if why else []
    return reasoning + ["\n\n", TOOL_CALLS, "\n", INVOKE, name[:3], name[3:], '">\n', PARAM, "it", "em", STRING_VALUE,
                        item[:2], item[2:], END_PARAM, "\n", END_INVOKE, "\n", END_TOOL_CALLS, END]


def _text_pieces(text):
    return [text[:len(text) // 2], text[len(text) // 2:], END]


def _prompts(tok, samples, modes):
    return [encode_prompt(tok, [{"role": "user", "content": s["prompt"]}], m) for s, m in zip(samples, modes)]


def test_run_episodes_append_only_and_loss_mask(tok):
    mode = "think_high"
    samples = gen_tasks("agent", "test", 2, 0)
    prompts = _prompts(tok, samples, [mode] * 2)
    items = [sorted(json.loads(s["initial_state"])["stock"])[0] for s in samples]
    scripts = [
        [_call_pieces("get_stock", items[0]), ["Do", "ne.</think>The answer is 4", "2.", END]],   # call, final answer
        [_call_pieces("get_stock", items[1]), _call_pieces("get_price", items[1])],              # hits the cap (2)
    ]
    # the test means something only if the scripted split is not what the tokenizer would produce
    text0 = "".join(scripts[0][0])
    assert _pieces_ids(tok, scripts[0][0]) != tok(text0, add_special_tokens=False)["input_ids"]

    engine = ScriptedEngine(tok, prompts, scripts)
    eps = run_episodes(engine, tok, prompts, samples, mode, SamplingParams(temperature=1.0, max_tokens=64),
                       max_turns=2)

    assert [e.turns for e in eps] == [2, 2]
    assert [e.finish_reason for e in eps] == ["stop", "turn_cap"]
    nxt = generation_prompt(tok, mode)
    for i, (e, s) in enumerate(zip(eps, samples)):
        env = InventoryEnv.from_state(json.loads(s["initial_state"]))
        want_ids, want_mask, want_lp = [], [], []
        for t, (tids, lps) in enumerate(engine.emitted[i]):
            want_ids += tids
            want_mask += [1] * len(tids)
            want_lp += lps
            if t + 1 < e.turns:                                       # tool results + next generation prompt
                calls = turn_tool_calls(tok.decode(tids, skip_special_tokens=False), mode)
                seg, seg_mask = encode_tool_results(tok, [env.step(c) for c in calls])
                assert seg_mask == [0] * len(seg)
                want_ids += seg + nxt
                want_mask += [0] * (len(seg) + len(nxt))
        # exact concatenation of engine outputs and encoded tool-result turns: nothing re-tokenized
        assert e.prompt_ids == prompts[i]
        assert e.ids == want_ids
        assert e.loss_mask == want_mask
        assert e.logprobs == want_lp and len(e.logprobs) == e.n_model_tokens
        assert len(e.sampling_mask) == e.n_model_tokens
        # the model tokens are exactly the engine's tokens, in order
        assert [t for t, m in zip(e.ids, e.loss_mask) if m] == [t for tids, _ in engine.emitted[i] for t in tids]
        assert "<|user|><tool_result>" in transcript(tok, e) and "<|tool|>" not in transcript(tok, e)

    # every request of a later turn extends the previous request's ids (append-only prompts)
    for i in range(len(prompts)):
        reqs = [ids for e, ids in engine.requests if e == i]
        assert reqs[0] == prompts[i]
        for a, b in zip(reqs, reqs[1:]):
            assert b[:len(a)] == a and len(b) > len(a)
        assert reqs[-1] + engine.emitted[i][-1][0] == prompts[i] + eps[i].ids


def test_run_episodes_mixes_modes_and_caps_turns_per_episode(tok):
    modes = ["think_max", "non_think"]
    samples = gen_tasks("agent", "test", 2, 1)
    prompts = _prompts(tok, samples, modes)
    items = [sorted(json.loads(s["initial_state"])["stock"])[0] for s in samples]
    scripts = [[_call_pieces("get_stock", items[0]), ["x</think>Done.", END]],
               [_call_pieces("get_stock", items[1], why=""), ["Done.", END]]]
    engine = ScriptedEngine(tok, prompts, scripts)
    cap = 3                                              # episode 1's turns may hold 3 tokens
    eps = run_episodes(engine, tok, prompts, samples, modes, SamplingParams(temperature=1.0, max_tokens=64),
                       max_tokens=[64, cap])
    # episode 0 ran both turns; its next-generation prompt is its own mode's
    assert eps[0].turns == 2 and eps[0].finish_reason == "stop"
    first = engine.emitted[0][0][0]
    env = InventoryEnv.from_state(json.loads(samples[0]["initial_state"]))
    obs = [env.step(c) for c in turn_tool_calls(tok.decode(first, skip_special_tokens=False), modes[0])]
    seg, _ = encode_tool_results(tok, obs)
    assert eps[0].ids[len(first):len(first) + len(seg) + len(generation_prompt(tok, "think_max"))] == \
        seg + generation_prompt(tok, "think_max")
    # episode 1 was cut at its cap: exactly the first 3 sampled tokens, then stop with "length"; nothing ran
    assert eps[1].turns == 1 and eps[1].finish_reason == "length" and eps[1].calls == [[]]
    assert eps[1].ids == engine.emitted[1][0][0][:cap] and eps[1].logprobs == engine.emitted[1][0][1][:cap]
    assert eps[1].loss_mask == [1] * cap


def _split(text):
    """A DSML turn as pieces: every special token alone, the text between them cut in two."""
    import re

    from core.chat import SPECIAL_TOKENS
    parts = re.split("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")", text)
    out = []
    for p in parts:
        out += [p] if p in SPECIAL_TOKENS or len(p) < 2 else [p[:len(p) // 2], p[len(p) // 2:]]
    return [p for p in out if p] + [END]


def test_loop_and_verifier_agree_on_which_calls_count(tok):
    """Calls written inside the reasoning never run in the loop and never count in the verifier; the calls the loop
    ran are exactly the ones the verifier replays, and the verdicts follow."""
    mode = "think_high"
    s = gen_tasks("agent", "test", 1, 3)[0]
    item = sorted(json.loads(s["initial_state"])["stock"])[0]
    n0 = json.loads(s["initial_state"])["stock"][item]
    row = {**s, "answer": str(n0 + 2), "reference_state": json.dumps(
        {**json.loads(s["initial_state"]), "stock": {**json.loads(s["initial_state"])["stock"], item: n0 + 2}},
        sort_keys=True)}
    in_reasoning = format_tool_call("add_stock", {"item": item, "qty": 50})
    scripts = [[
        _split("Maybe " + in_reasoning + " no.</think>\n\n" + format_tool_call("add_stock", {"item": item, "qty": 2})),
        _split("Look " + in_reasoning + "</think>\n\n" + format_tool_call("get_stock", {"item": item})),
        _split(f"ok</think>There are {n0 + 2}."),
    ]]
    prompts = _prompts(tok, [row], [mode])
    ep = run_episodes(ScriptedEngine(tok, prompts, scripts), tok, prompts, [row], mode,
                      SamplingParams(temperature=1.0, max_tokens=200))[0]
    assert ep.finish_reason == "stop" and ep.calls == [
        [{"name": "add_stock", "arguments": {"item": item, "qty": 2}}],
        [{"name": "get_stock", "arguments": {"item": item}}], []]
    text = transcript(tok, ep)
    assert f"<tool_result>ok: {item} stock is {n0 + 2}</tool_result>" in text     # the 50 never ran
    v = score_local("agent", text, row, mode)
    assert v.score == 1.0 and v.details["tool_turns"] == 2, v.details


def test_scripted_episode_per_environment(tok):
    """One episode per environment through run_episodes, each judged 1 by the verifier: inventory (two calls in
    one turn, then an answer), BFCL (the episode ends at the turn of calls: one engine call), python (run_python,
    then the final code)."""
    from rewards.sandbox import sandbox_status

    inv = [s for s in gen_tasks("agent", "train", 40, 5) if json.loads(s["reference_rounds"]) == [2]][0]
    funcs = [{"name": "calc_area", "parameters": {"type": "dict", "properties": {"base": {"type": "integer"}},
                                                  "required": ["base"]}}]
    bfcl = bfcl_row("Area for base 10?", funcs, [{"calc_area": {"base": [10]}}])
    code = gen_tasks("code", "train", 1, 0)[0]
    py = python_row(code)
    head = code["prompt"].split("\n", 1)[0]
    solution = f"{head}\n{code['canonical_solution']}"
    inv_calls = json.loads(inv["reference_actions"])
    scripts = [
        [_split("\n\n" + format_tool_calls(inv_calls)), _split(f"Done. The answer is {inv['answer']}." if inv["answer"]
                                                               else "Done.")],
        [_split("\n\n" + format_tool_call("calc_area", {"base": 10}))],
        [_split("\n\n" + format_tool_call("run_python", {"code": solution + "\nprint('ran')"})),
         _split(f"```python\n{solution}```")],
    ]
    rows = [inv, bfcl, py]
    if sandbox_status() == "unavailable":
        rows, scripts = rows[:2], scripts[:2]
    mode = "non_think"
    prompts = _prompts(tok, rows, [mode] * len(rows))
    engine = ScriptedEngine(tok, prompts, scripts)
    eps = run_episodes(engine, tok, prompts, rows, mode, SamplingParams(temperature=1.0, max_tokens=400))
    assert [e.finish_reason for e in eps] == ["stop", "tool_calls", "stop"][:len(rows)]
    assert [e.turns for e in eps] == [2, 1, 2][:len(rows)]
    assert eps[0].calls[0] == [{"name": c["name"], "arguments": c["arguments"]} for c in inv_calls]
    assert transcript(tok, eps[0]).count("<tool_result>") == 2
    for e, row in zip(eps, rows):
        v = score_local("agent", transcript(tok, e), row, mode)
        assert v.score == 1.0, (row["env"], v.details)
    if len(rows) == 3:
        assert "<tool_result>status: ok\nstdout:\nran\n</tool_result>" in transcript(tok, eps[2])


def test_run_episodes_checks_lengths(tok):
    with pytest.raises(ValueError):
        run_episodes(None, tok, [[1]], [], "non_think", SamplingParams(max_tokens=4))


class BoundedEngine(ScriptedEngine):
    """A scripted engine that, like vLLM, refuses a request whose prompt does not fit its context."""

    def __init__(self, *a, max_model_len: int):
        super().__init__(*a)
        self.max_model_len = max_model_len

    def generate(self, prompts, params):
        for ids in prompts:
            if len(ids) >= self.max_model_len:
                raise ValueError(f"prompt of {len(ids)} tokens exceeds max_model_len {self.max_model_len}")
        return super().generate(prompts, params)


def test_an_episode_whose_context_is_full_ends_as_length(tok):
    """A policy writing long tool turns fills the engine's context within a few turns (seen in the reward-free GRPO
    control: 'your prompt contains 523 input tokens' at max_model_len 512, and the stage failed). The episode then
    ends with finish_reason "length" instead of sending a prompt the engine refuses; the other episodes go on."""
    mode = "non_think"
    samples = gen_tasks("agent", "test", 2, 0)
    prompts = _prompts(tok, samples, [mode] * 2)
    items = [sorted(json.loads(s["initial_state"])["stock"])[0] for s in samples]
    long_call = _call_pieces("get_stock", items[0], why="")
    scripts = [[long_call] * 6, [_call_pieces("get_stock", items[1], why=""), ["The answer is 4", END]]]
    one_turn = len(_pieces_ids(tok, long_call)) + 12          # a call turn plus its tool-result turn, about
    limit = len(prompts[0]) + 2 * one_turn + 4
    engine = BoundedEngine(tok, prompts, scripts, max_model_len=limit)
    eps = run_episodes(engine, tok, prompts, samples, mode, SamplingParams(temperature=1.0, max_tokens=64),
                       max_turns=6)
    assert eps[0].finish_reason == "length" and 1 < eps[0].turns < 6
    assert len(eps[0].prompt_ids) + len(eps[0].ids) >= limit
    assert eps[1].finish_reason == "stop" and eps[1].turns == 2
    with pytest.raises(ValueError, match="exceeds max_model_len"):      # without the check the engine refuses
        engine.generate([prompts[0] + eps[0].ids], SamplingParams(max_tokens=8))
