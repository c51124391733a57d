"""Multi-turn tool rollouts for the agent domain, append-only at the token level.

Each episode: the model writes a turn; if its answer part holds a tool call (``rewards.agent.turn_tool_calls``, the
rule the verifier applies too: calls inside the reasoning do not count), the environment answers, the
observation segment and the next generation prompt are appended as token ids, and generation continues until a
turn without a tool call (the final answer), a turn cut by the length limit, or the turn cap. Earlier turns are
never re-tokenized; ``loss_mask`` marks the model's own tokens only, and ``logprobs`` holds the sampler's log-prob
of each of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rewards.agent import env_for, turn_tool_calls

from .encoding import encode_segment, generation_prompt
from .engine import SamplingParams


@dataclass
class Episode:
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)         # everything after the prompt
    loss_mask: list[int] = field(default_factory=list)   # 1 = written by the model
    logprobs: list[float] = field(default_factory=list)  # one per model token, in order
    sampling_mask: list = field(default_factory=list)    # Keep-Sampling-Mask entries, one per model token
    routes: object = None    # Keep Routing: the last engine call's routed experts, [len(prompt + ids) - 1, layers, k]
    turns: int = 0
    finish_reason: str = "length"
    done: bool = False

    @property
    def n_model_tokens(self) -> int:
        return sum(self.loss_mask)


def run_episodes(engine, tok, prompts: list[list[int]], samples: list[dict], mode,
                 params: SamplingParams, max_turns: int | None = None,
                 max_tokens: list[int] | None = None) -> list[Episode]:
    """One episode per (prompt, sample); ``params.n`` must be 1 (repeat samples for groups).

    ``mode`` is one reasoning mode for all episodes or a list with one per episode; ``max_tokens`` optionally caps
    each episode's turns below ``params.max_tokens`` (a turn cut there ends with ``finish_reason == "length"``,
    exactly as if it had been sampled with that limit), so episodes of several modes share every engine call."""
    if params.n != 1:
        raise ValueError("run_episodes samples one completion per episode; repeat the prompts for groups")
    modes = [mode] * len(prompts) if isinstance(mode, str) else list(mode)
    limits = list(max_tokens) if max_tokens is not None else [params.max_tokens] * len(prompts)
    if len(modes) != len(prompts) or len(limits) != len(prompts):
        raise ValueError("run_episodes: one mode and one max_tokens per prompt")
    envs = [env_for(s) for s in samples]
    eps = [Episode(prompt_ids=list(p)) for p in prompts]
    caps = [max_turns or int(s.get("max_turns", 4)) for s in samples]
    next_prompt = {m: generation_prompt(tok, m) for m in set(modes)}
    while True:
        active = [i for i, e in enumerate(eps) if not e.done]
        if not active:
            return eps
        outs = engine.generate([eps[i].prompt_ids + eps[i].ids for i in active], params)
        for i, comps in zip(active, outs):
            c, e = comps[0], eps[i]
            ids, finish, text = c.token_ids, c.finish_reason, c.text
            if len(ids) > limits[i]:
                ids, finish = ids[:limits[i]], "length"
                text = tok.decode(ids, skip_special_tokens=False)
            if c.routed_experts is not None:          # this call ran the whole episode so far: its routes cover it
                e.routes = c.routed_experts[:len(e.prompt_ids) + len(e.ids) + len(ids) - 1]
            e.ids += ids
            e.loss_mask += [1] * len(ids)
            e.logprobs += c.logprobs[:len(ids)]
            e.sampling_mask += (c.sampling_mask or [None] * len(c.token_ids))[:len(ids)]
            e.turns += 1
            calls = turn_tool_calls(text, modes[i])    # the verifier's rule: calls in the answer part only
            if finish != "stop" or not calls or e.turns >= caps[i]:
                e.done = True
                e.finish_reason = ("length" if finish != "stop" else "stop" if not calls else "turn_cap")
                continue
            obs = "\n".join(envs[i].call(call) for call in calls)
            seg, _ = encode_segment(tok, "tool", obs, modes[i])
            e.ids += seg + next_prompt[modes[i]]
            e.loss_mask += [0] * (len(seg) + len(next_prompt[modes[i]]))


def transcript(tok, episode: Episode) -> str:
    """The text after the prompt (assistant turns and tool observations with their markers), for the verifier."""
    return tok.decode(episode.ids, skip_special_tokens=False)
