"""Multi-turn tool rollouts for the agent domain, append-only at the token level, for any tool environment.

Each episode drives one ``rewards.agent.AgentEpisode`` -- the rule the verifier replays, so both agree on which calls
count (answer part only, never the reasoning) and on when an episode ends -- with the environment its task row names
(``row["env"]``: inventory, bfcl, python; ``rewards.envs``). The model writes a turn; if the rule runs its calls, the
environment answers them, and the user turn carrying the results (``<tool_result>`` blocks in call order, DeepSeek-V4's
format) and the next generation prompt are appended as token ids; generation continues until a turn without calls
(the final answer: ``finish_reason == "stop"``), a turn cut by the length limit or a context the engine cannot extend
(``"length"``: prompt + episode at the engine's ``max_model_len``), a turn of calls in an
environment that stops there (BFCL: ``"tool_calls"``), or the turn cap (``"turn_cap"``). Earlier turns are never
re-tokenized; ``loss_mask`` marks the model's own tokens only, and ``logprobs`` holds the sampler's log-prob of each.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rewards.agent import AgentEpisode

from .encoding import encode_tool_results, generation_prompt
from .engine import SamplingParams

MAX_PARALLEL_STEPS = 8      # episodes whose environments block (the sandbox) step in this many threads


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
    calls: list[list[dict]] = field(default_factory=list)  # per turn, the calls that counted ({name, arguments})

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
    if len(modes) != len(prompts) or len(limits) != len(prompts) or len(samples) != len(prompts):
        raise ValueError("run_episodes: one sample, one mode and one max_tokens per prompt")
    agents = [AgentEpisode(s, m, max_turns=max_turns) for s, m in zip(samples, modes)]
    eps = [Episode(prompt_ids=list(p)) for p in prompts]
    next_prompt = {m: generation_prompt(tok, m) for m in set(modes)}
    eos = tok.eos_token_id
    context = getattr(engine, "max_model_len", None)   # an episode whose context is full ends as "length"
    while True:
        if context:
            for e in eps:
                if not e.done and len(e.prompt_ids) + len(e.ids) >= context:
                    e.done, e.finish_reason = True, "length"
        active = [i for i, e in enumerate(eps) if not e.done]
        if not active:
            return eps
        outs = engine.generate([eps[i].prompt_ids + eps[i].ids for i in active], params)
        turns = []
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
            # complete = closed by the end token, as the verifier reads the transcript
            turns.append((i, text, finish == "stop" and bool(ids) and ids[-1] == eos))
        if sum(agents[i].env.blocking for i, _, _ in turns) > 1:     # sandboxed tools: run the steps concurrently
            with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_STEPS, len(turns))) as pool:
                stepped = list(pool.map(lambda t: agents[t[0]].step(t[1], t[2]), turns))
        else:
            stepped = [agents[i].step(text, complete) for i, text, complete in turns]
        for (i, _, _), (obs, done) in zip(turns, stepped):
            e, a = eps[i], agents[i]
            e.calls.append([c.as_dict() for c in a.trace.calls[-1]])
            if done:
                e.done, e.finish_reason = True, a.end
                continue
            seg, _ = encode_tool_results(tok, obs)
            e.ids += seg + next_prompt[modes[i]]
            e.loss_mask += [0] * (len(seg) + len(next_prompt[modes[i]]))


def transcript(tok, episode: Episode) -> str:
    """The text after the prompt (assistant turns and tool-result turns with their markers), for the verifier."""
    return tok.decode(episode.ids, skip_special_tokens=False)
