"""The student's own trajectories for one distill step, and the positions the loss is taken at.

A trajectory is the prompt followed by what the student generated; for the agent domain a whole tool episode,
where only the model's own tokens count (tool observations and generation prompts are context, not targets).
Position ``p`` of ``ids`` carries the distribution of token ``p + 1``, so the loss positions are those whose next
token the model wrote.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

from rollout.agent_loop import run_episodes
from rollout.encoding import encode_prompt
from rollout.engine import SamplingParams
from train.evaluate import prompt_messages

from .routing import Draw


@dataclass
class Trajectory:
    draw: Draw
    ids: list[int]              # prompt + completion (the agent: the whole episode)
    positions: list[int]        # p such that ids[p + 1] was written by the model

    @property
    def n_tokens(self) -> int:
        return len(self.positions)


def loss_positions(mask: list[int]) -> list[int]:
    """Positions whose *next* token has mask 1 (``mask`` covers the whole sequence)."""
    return [p for p in range(len(mask) - 1) if mask[p + 1]]


def _seed(seed: int, step: int, group: str) -> int:
    return zlib.crc32(f"{seed}:{step}:{group}".encode())


def generate_trajectories(engine, tok, draws: list[Draw], tasks: dict[str, list[dict]], samples_per_prompt: int,
                          sampling, max_tokens: dict[str, int], seed: int, step: int) -> list[Trajectory]:
    """``samples_per_prompt`` trajectories per draw, in two engine loops whatever the mix of modes: one for the
    agent draws (tool episodes) and one for all the others. Each trajectory keeps its own mode's token budget: a
    completion sampled past it is cut there, which is exactly a sample drawn with that limit. Both calls are seeded
    from (seed, step), so a resumed run samples exactly the same tokens."""
    groups: dict[str, list[Draw]] = {}
    for d in draws:
        groups.setdefault("agent" if d.domain == "agent" else "text", []).append(d)
    out: list[Trajectory] = []
    for kind, group in sorted(groups.items()):
        samples = [tasks[d.domain][d.task] for d in group]
        prompts = [encode_prompt(tok, prompt_messages(s, d.mode), d.mode) for s, d in zip(samples, group)]
        budgets = [max_tokens[d.mode] for d in group]
        params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                max_tokens=max(budgets), seed=_seed(seed, step, kind))
        rep = [i for i in range(len(group)) for _ in range(samples_per_prompt)]
        if kind == "agent":
            eps = run_episodes(engine, tok, [prompts[i] for i in rep], [samples[i] for i in rep],
                               [group[i].mode for i in rep], params, max_tokens=[budgets[i] for i in rep])
            for i, e in zip(rep, eps):
                ids = e.prompt_ids + e.ids
                out.append(Trajectory(group[i], ids, loss_positions([0] * len(e.prompt_ids) + e.loss_mask)))
        else:
            outs = engine.generate(prompts, replace(params, n=samples_per_prompt))
            for i, comps in enumerate(outs):
                for c in comps:
                    gen = list(c.token_ids)[:budgets[i]]
                    ids = list(c.prompt_ids) + gen
                    out.append(Trajectory(group[i], ids, loss_positions([0] * len(c.prompt_ids) + [1] * len(gen))))
    return [t for t in out if t.positions]
