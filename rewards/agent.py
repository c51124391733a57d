"""Agent domain: the episode rule the rollout loop and the verifier share, and the verdict on a finished transcript.

**The rule** (``AgentEpisode.step``, one call per assistant turn): the calls that count are the DSML tool calls of
the turn's *answer part* (``turn_tool_calls``: never inside the reasoning; a think turn that never closed its reasoning
has none; a turn cut by the length limit has none). A turn without calls is the final answer and ends the episode; a
turn with calls ends it when the environment stops at calls (BFCL) or when it is the ``max_turns``-th turn (its calls
are not run: nothing would read their results); otherwise the environment answers each call, in order, and the
results go back in the next user turn. ``rollout.agent_loop.run_episodes`` drives one ``AgentEpisode`` per episode;
the verifier replays the transcript's assistant turns through a fresh one, so both agree on which calls count.

**Transcript** (the agent ``completion``): the assistant turns and tool-result turns exactly as ``core.chat`` renders
them, starting after the prompt's generation prefix::

    <turn 1><|end|><|user|><tool_result>obs</tool_result><|end|><|assistant|><prefill><turn 2><|end|>...

(a leading ``<|assistant|><prefill>`` is accepted too). It is read by position -- the engine stops a turn at
``<|end|>``, so text the model writes inside a turn cannot open a new one -- and the tool results in it are never
trusted: the verifier hands the counted calls to the row's environment (``rewards.envs``, ``row["env"]``), whose
``verify`` decides (the inventory replays them on a fresh state; BFCL compares them with the ground truth; the Python
tool runs the row's tests on the final answer's code). Every turn must keep the mode's reasoning format.
"""
from __future__ import annotations

from core.chat import ASSISTANT, BOS, END, END_THINK, PAD, USER, prefill, split_reasoning, tool_results

from .base import Verdict, clean_completion, fail, register_verifier
from .envs import ToolCall, Trace, clean_observation, make_env, parse_tool_calls

DEFAULT_MAX_TURNS = 4


def env_for(sample: dict):
    """A fresh environment of the sample's kind (``sample["env"]``, default inventory) reset to the sample."""
    return make_env(sample)


def _strip_prefill(text: str, mode: str) -> str:
    t = clean_completion(text)
    p = prefill(mode)
    return t[len(p):] if t.startswith(p) else t


def _answer_text(assistant_text: str, mode: str) -> tuple[str, bool]:
    """The part of a turn that may hold tool calls / the final answer (reasoning removed) and its format flag."""
    t = _strip_prefill(assistant_text, mode)
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


class AgentEpisode:
    """One episode under the shared rule: its environment, turns, counted calls, end, and transcript.

    ``execute=False`` (the verifier) records the calls without running them (the environment's ``verify`` decides
    what to do with them)."""

    def __init__(self, sample: dict, mode: str = "non_think", max_turns: int | None = None, execute: bool = True):
        self.sample, self.mode, self.execute = sample, mode, execute
        self.env = env_for(sample)
        self.max_turns = int(max_turns or sample.get("max_turns") or DEFAULT_MAX_TURNS)
        self.trace = Trace(mode)
        self.done = False
        self.parts: list[str] = []

    @property
    def turns(self) -> int:
        return len(self.trace.turns)

    @property
    def end(self) -> str:
        return self.trace.end

    def step(self, assistant_text: str, complete: bool = True) -> tuple[list[str] | None, bool]:
        """Take one assistant turn (its text after the prefill; ``complete=False``: cut by the length limit).
        Returns (the tool results, in call order, or None when no call runs; whether the episode is over)."""
        if self.done:
            raise RuntimeError("episode is over")
        t = _strip_prefill(assistant_text, self.mode)
        answer, ok = _answer_text(t, self.mode)
        calls = parse_tool_calls(answer) if complete else []     # turn_tool_calls(t), its answer already split
        tr = self.trace
        tr.format_ok &= ok
        tr.turns.append(t)
        tr.calls.append(calls)
        self.parts.append((ASSISTANT + prefill(self.mode) if len(tr.turns) > 1 else "") + t + (END if complete else ""))
        if not complete:
            tr.end = "length"
        elif not calls:
            tr.end, tr.final = "stop", answer
        elif self.env.stop_after_calls:
            tr.end = "tool_calls"
        elif len(tr.turns) >= self.max_turns:
            tr.end = "turn_cap"
        self.done = bool(tr.end)
        if self.done or not self.execute:
            return None, self.done
        obs = [clean_observation(self._run(c)) for c in calls]
        self.parts.append(USER + tool_results(obs) + END)
        return obs, False

    def _run(self, call: ToolCall) -> str:
        try:
            return self.env.step(call)
        except Exception as e:  # noqa: BLE001 -- an environment bug on odd arguments is an observation, not a crash
            return f"error: the tool failed ({type(e).__name__})"

    @property
    def transcript(self) -> str:
        return "".join(self.parts)


def split_transcript(text: str, mode: str) -> tuple[list[str], bool, bool]:
    """(assistant turns after their prefill, whether the last turn was closed by ``<|end|>``, whether the structure
    is sound). Turns alternate by position: assistant, tool results, assistant, ..."""
    t = text.rstrip()
    while t.endswith((PAD, BOS)):
        t = t[:-len(PAD if t.endswith(PAD) else BOS)].rstrip()
    closed = t.endswith(END)
    pieces = clean_completion(t).split(END)
    head, ok, turns = ASSISTANT + prefill(mode), True, []
    for k, piece in enumerate(pieces):
        if k % 2:                                   # a tool-result turn
            if not piece.startswith(USER):
                ok = False
                break
            continue
        if piece.startswith(head):
            piece = piece[len(head):]
        elif k:
            ok = False
            break
        turns.append(piece)
    return turns, closed, ok


def parse_transcript(text: str, mode: str) -> list[tuple[str, str]]:
    """[(role, content)]: the assistant turns (after their prefill) and the tool-result turns, in order."""
    out = []
    for k, piece in enumerate(clean_completion(text).split(END)):
        if k % 2:
            out.append(("user", piece[len(USER):] if piece.startswith(USER) else piece))
        else:
            head = ASSISTANT + prefill(mode)
            out.append(("assistant", piece[len(head):] if piece.startswith(head) else piece))
    return out


@register_verifier("agent", isolation="worker")
def verify_agent(completion: str, sample: dict, mode: str) -> Verdict:
    try:
        ep = AgentEpisode(sample, mode, execute=False)
    except (KeyError, TypeError, ValueError) as e:
        return fail(f"bad agent sample: {type(e).__name__}: {str(e)[:200]}")
    turns, closed, structure_ok = split_transcript(completion, mode)
    if not turns or not "".join(turns).strip():
        return fail("empty transcript", format_ok=False)
    for k, t in enumerate(turns):
        ep.step(t, complete=closed or k + 1 < len(turns))
        if ep.done:
            break
    tr = ep.trace
    if not ep.done:
        tr.end = "unfinished"                       # the transcript stops while the episode goes on
    v = ep.env.verify(tr, sample)
    checks = []
    if not structure_ok:
        checks.append("malformed_transcript")
    if len(turns) > len(tr.turns):
        checks.append("turn_cap_exceeded" if tr.end == "turn_cap" else "turns_after_end")
    if not tr.format_ok:
        checks.append("format")
    checks += v.details.get("failed_checks") or []
    details = {**v.details, "extracted": (tr.final or "")[:500], "failed_checks": checks, "format_ok": tr.format_ok,
               "env": sample.get("env") or "inventory", "end": tr.end, "turns": len(turns),
               "tool_turns": sum(1 for c in tr.calls if c), "error": ", ".join(checks) or None}
    return Verdict(0.0 if checks else v.score, details)
