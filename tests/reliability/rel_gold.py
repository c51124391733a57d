"""Right answers for generated tasks (what a perfect policy would write), per domain, in ``non_think`` mode."""
from __future__ import annotations


def gold(sample: dict) -> str:
    d = sample["domain"]
    if d == "math":
        return f"The answer is \\boxed{{{sample['answer']}}}."
    if d == "code":
        return sample["canonical_solution"]
    if d == "instruct":
        return sample["reference_response"]
    from rewards.agent import AgentEpisode
    from rewards.tasks import demonstration

    ep = AgentEpisode(sample, "non_think")
    for m in demonstration(sample, "non_think"):
        if m["role"] == "assistant":
            _, done = ep.step(m["content"])
            if done:
                break
    return ep.transcript
