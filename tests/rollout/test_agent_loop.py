"""Multi-turn tool episodes: append-only token ids (never re-tokenized) and a loss mask over model tokens only.

A scripted engine replays fixed turns (a tool call, then a final answer) and emits each turn's ids as a
*non-canonical* split of its text (piece by piece), so any re-tokenization of earlier turns would change the ids.
"""
import json

from transformers import AutoTokenizer

from core.chat import END
from rewards.envs import InventoryEnv, parse_tool_calls
from rewards.tasks import generate as gen_tasks
from rollout.agent_loop import run_episodes, transcript
from rollout.encoding import encode_prompt, encode_segment, generation_prompt
from rollout.engine import Completion, SamplingParams


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


def _call_pieces(name, item):
    # split mid-word and mid-JSON so the pieces' ids differ from the whole text's canonical tokenization
    body = json.dumps({"name": name, "arguments": {"item": item}})
    cut = len(body) // 2
    return ["I ch", "eck.</think>", "<tool_call>", body[:cut], body[cut:], "</tool_call>", END]


def test_run_episodes_append_only_and_loss_mask(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    mode = "think_high"
    samples = gen_tasks("agent", "test", 2, 0)
    prompts = [encode_prompt(tok, [{"role": "user", "content": s["prompt"]}], mode) for s in samples]
    items = [sorted(json.loads(s["initial_state"])["stock"])[0] for s in samples]
    scripts = [
        [_call_pieces("get_stock", items[0]), ["Do", "ne. The answer is 4", "2.", END]],   # tool call, final answer
        [_call_pieces("get_stock", items[1]), _call_pieces("get_price", items[1])],        # hits the turn cap (2)
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
            if t + 1 < e.turns:                                       # observation + next generation prompt
                obs = "\n".join(env.call(c) for c in parse_tool_calls(tok.decode(tids, skip_special_tokens=False)))
                seg, seg_mask = encode_segment(tok, "tool", obs, mode)
                assert seg_mask == [0] * len(seg)
                want_ids += seg + nxt
                want_mask += [0] * (len(seg) + len(nxt))
        # exact concatenation of engine outputs and encoded tool segments: nothing re-tokenized
        assert e.prompt_ids == prompts[i]
        assert e.ids == want_ids
        assert e.loss_mask == want_mask
        assert e.logprobs == want_lp and len(e.logprobs) == e.n_model_tokens
        assert len(e.sampling_mask) == e.n_model_tokens
        # the model tokens are exactly the engine's tokens, in order
        assert [t for t, m in zip(e.ids, e.loss_mask) if m] == [t for tids, _ in engine.emitted[i] for t in tids]
        assert "<|tool|>" in transcript(tok, e)

    # every request of a later turn extends the previous request's ids (append-only prompts)
    for i in range(len(prompts)):
        reqs = [ids for e, ids in engine.requests if e == i]
        assert reqs[0] == prompts[i]
        for a, b in zip(reqs, reqs[1:]):
            assert b[:len(a)] == a and len(b) > len(a)
        assert reqs[-1] + engine.emitted[i][-1][0] == prompts[i] + eps[i].ids


def test_run_episodes_mixes_modes_and_caps_turns_per_episode(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    modes = ["think_max", "non_think"]
    samples = gen_tasks("agent", "test", 2, 1)
    prompts = [encode_prompt(tok, [{"role": "user", "content": s["prompt"]}], m) for s, m in zip(samples, modes)]
    items = [sorted(json.loads(s["initial_state"])["stock"])[0] for s in samples]
    scripts = [[_call_pieces("get_stock", items[0]), ["Done.", END]],
               [_call_pieces("get_stock", items[1]), ["Done.", END]]]
    engine = ScriptedEngine(tok, prompts, scripts)
    cap = 3                                              # episode 1's turns may hold 3 tokens
    eps = run_episodes(engine, tok, prompts, samples, modes, SamplingParams(temperature=1.0, max_tokens=64),
                       max_tokens=[64, cap])
    # episode 0 ran both turns; its next-generation prompt is its own mode's
    assert eps[0].turns == 2 and eps[0].finish_reason == "stop"
    first = engine.emitted[0][0][0]
    obs = "\n".join(InventoryEnv.from_state(json.loads(samples[0]["initial_state"])).call(c)
                    for c in parse_tool_calls(tok.decode(first, skip_special_tokens=False)))
    seg, _ = encode_segment(tok, "tool", obs, modes[0])
    assert eps[0].ids[len(first):len(first) + len(seg) + len(generation_prompt(tok, "think_max"))] == \
        seg + generation_prompt(tok, "think_max")
    # episode 1 was cut at its cap: exactly the first 3 sampled tokens, then stop with "length"
    assert eps[1].turns == 1 and eps[1].finish_reason == "length"
    assert eps[1].ids == engine.emitted[1][0][0][:cap] and eps[1].logprobs == engine.emitted[1][0][1][:cap]
    assert eps[1].loss_mask == [1] * cap
