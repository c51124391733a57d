"""Agent domain: episode helpers for the rollout layer's multi-turn loop, and the verdict on a finished transcript.

The loop (in the rollout layer)::

    ep = AgentEpisode(sample, mode)
    text = generate(prompt)                      # one assistant turn
    while True:
        obs, done = ep.step(text)                # runs its tool calls on the episode's environment
        if done: break                           # final answer (no tool call) or turn cap reached
        text = generate(prompt + ep.transcript)  # the next turn sees the observation
    verdict = rewards.base.score("agent", ep.transcript, sample, mode)

**Transcript format** (the agent ``completion``): the assistant turns and tool observations rendered as
``core.chat.render_prompt`` renders them, starting after the prompt's generation prefix::

    <turn 1 text><|end|><|tool|><observation 1><|end|><|assistant|><prefill><turn 2 text><|end|>…

(a leading ``<|assistant|><prefill>`` is accepted too). **Verdict**: the tool calls parsed from the assistant turns
(answer part only, never the reasoning) are replayed in order on a fresh environment — the observations in the
transcript are not trusted — and the final state must equal ``reference_state``; the last turn must be a final
answer (no tool call) within ``max_turns`` turns, and it must contain ``answer`` when the task has one.
"""
from __future__ import annotations

import json
import re

from .base import Verdict, clean_completion, fail, register_verifier
from core.chat import ASSISTANT, END, END_THINK, TOOL, prefill, split_reasoning
from .envs import InventoryEnv, ToolCall, parse_tool_calls

DEFAULT_MAX_TURNS = 4


def env_for(sample: dict) -> InventoryEnv:
    """A fresh environment in the sample's initial state."""
    state = sample["initial_state"]
    return InventoryEnv.from_state(json.loads(state) if isinstance(state, str) else state)


def _answer_text(assistant_text: str, mode: str) -> tuple[str, bool]:
    """The part of a turn that may hold tool calls / the final answer (reasoning removed) and its format flag."""
    t = clean_completion(assistant_text)
    p = prefill(mode)
    if t.startswith(p):
        t = t[len(p):]
    if mode == "non_think":
        return split_reasoning(t, mode)[1:]
    _, answer, ok = split_reasoning(t, mode)
    if END_THINK not in t:
        answer = ""  # a think turn that never closed its reasoning has no answer part
    return answer, ok


def turn_tool_calls(assistant_text: str, mode: str) -> list[ToolCall]:
    """The tool calls that count in one assistant turn: those in its answer part, never in its reasoning (a think
    turn that never closed its reasoning has none). The one rule the rollout loop and the verifier share."""
    return parse_tool_calls(_answer_text(assistant_text, mode)[0])


def step(env: InventoryEnv, assistant_text: str, mode: str = "non_think") -> tuple[str | None, bool]:
    """Run the tool calls of one assistant turn. Returns (observation, done); (None, True) for a final answer."""
    calls = turn_tool_calls(assistant_text, mode)
    if not calls:
        return None, True
    return "\n".join(env.call(c) for c in calls), False


class AgentEpisode:
    """One episode: environment, turn count, cap, and the transcript in the verdict's format."""

    def __init__(self, sample: dict, mode: str = "non_think"):
        self.sample, self.mode = sample, mode
        self.env = env_for(sample)
        self.max_turns = int(sample.get("max_turns") or DEFAULT_MAX_TURNS)
        self.turns = 0
        self.done = False
        self.parts: list[str] = []

    def step(self, assistant_text: str) -> tuple[str | None, bool]:
        if self.done:
            raise RuntimeError("episode is over")
        t = clean_completion(assistant_text)
        p = prefill(self.mode)
        if t.startswith(p):
            t = t[len(p):]
        self.parts.append((ASSISTANT + p if self.turns else "") + t + END)
        self.turns += 1
        obs, done = step(self.env, t, self.mode)
        if obs is not None:
            self.parts.append(TOOL + obs + END)
        if self.turns >= self.max_turns:
            done = True
        self.done = done
        return obs, done

    @property
    def transcript(self) -> str:
        return "".join(self.parts)


_MARK_RE = re.compile("(" + "|".join(re.escape(m) for m in (ASSISTANT, TOOL, END)) + ")")


def parse_transcript(text: str, mode: str) -> list[tuple[str, str]]:
    """[(role, content)] with role "assistant" or "tool", from the transcript format above."""
    turns, role, buf = [], "assistant", []
    for piece in _MARK_RE.split(text):
        if piece == ASSISTANT or piece == TOOL:
            if buf and "".join(buf).strip():
                turns.append((role, "".join(buf)))
            role, buf = ("assistant" if piece == ASSISTANT else "tool"), []
        elif piece == END:
            if buf or role == "assistant":
                turns.append((role, "".join(buf)))
            role, buf = "assistant", []
        else:
            buf.append(piece)
    if buf and "".join(buf).strip():
        turns.append((role, "".join(buf)))
    p = prefill(mode)
    return [(r, c[len(p):] if r == "assistant" and c.startswith(p) else c) for r, c in turns]


def answer_matches(final: str, answer: str) -> bool:
    """``answer`` appears in ``final`` as a whole token (``2`` does not match inside ``12`` or ``2.5``)."""
    return re.search(r"(?<![\w.])" + re.escape(answer) + r"(?![\w]|\.\d)", final) is not None


@register_verifier("agent", isolation="worker")
def verify_agent(completion: str, sample: dict, mode: str) -> Verdict:
    try:
        env = env_for(sample)
        reference = json.loads(sample["reference_state"])
    except (KeyError, TypeError, ValueError) as e:
        return fail(f"bad agent sample: {type(e).__name__}")
    max_turns = int(sample.get("max_turns") or DEFAULT_MAX_TURNS)
    answer = str(sample.get("answer") or "")
    turns = [c for r, c in parse_transcript(clean_completion(completion), mode) if r == "assistant"]
    if not turns:
        return fail("empty transcript", format_ok=False)
    checks, format_ok, calls_made, observations = [], True, 0, []
    final = None
    for i, t in enumerate(turns[:max_turns]):
        text, ok = _answer_text(t, mode)
        format_ok &= ok
        obs, done = step(env, t, mode)
        if done:
            final = text
            break
        calls_made += 1
        observations.append(obs[:200])
    if len(turns) > max_turns:
        checks.append("turn_cap_exceeded")
    if final is None:
        checks.append("no_final_answer_within_turn_cap")
    if not format_ok:
        checks.append("format")
    if json.dumps(env.state, sort_keys=True) != json.dumps(reference, sort_keys=True):
        checks.append("final_state_mismatch")
    if answer and not (final is not None and answer_matches(final, answer)):
        checks.append("answer_mismatch")
    details = {"extracted": (final or "")[:500], "failed_checks": checks, "format_ok": format_ok,
               "turns": len(turns), "tool_turns": calls_made, "observations": observations,
               "error": None if not checks else ", ".join(checks)}
    return Verdict(0.0 if checks else 1.0, details)
