"""The environment interface, the registry of environments by name, and the episode record a verifier judges."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from core.chat import ToolCall, escape_specials, render_tools

from ..verdict import Verdict

MAX_OBS_CHARS = 2000        # an observation longer than this is cut (the context is the model's to spend)


def clean_observation(text: str) -> str:
    """What goes back to the model for one call: cut to ``MAX_OBS_CHARS``, special-token strings defanged (a tool
    output cannot close its turn or forge one)."""
    text = text if len(text) <= MAX_OBS_CHARS else text[:MAX_OBS_CHARS] + "\n[truncated]"
    return escape_specials(text)


def tool_schema(name: str, params: dict[str, str], required: list[str] | None = None,
                description: str | None = None) -> dict:
    """An OpenAI-style tool schema with flat parameters (``{"item": "string", "qty": "integer"}``)."""
    fn = {"name": name}
    if description:
        fn["description"] = description
    fn["parameters"] = {"type": "object", "properties": {k: {"type": t} for k, t in params.items()},
                        "required": list(params) if required is None else required}
    return {"type": "function", "function": fn}


@dataclass
class Trace:
    """An episode as the verifier sees it: the assistant turns (text after the prefill) and, per turn, the calls
    that counted -- the rollout loop's rule (``rewards.agent.AgentEpisode``), so both agree on what ran."""
    mode: str
    turns: list[str] = field(default_factory=list)
    calls: list[list[ToolCall]] = field(default_factory=list)
    final: str | None = None    # the answer part of the final turn (a turn without calls); None: the episode had none
    end: str = ""               # "stop" (final answer), "tool_calls" (the environment ends at calls), "turn_cap",
                                # "length" (the last turn was cut), "unfinished" (the transcript stops before the end)
    format_ok: bool = True

    def all_calls(self) -> list[ToolCall]:
        return [c for turn in self.calls for c in turn]


@runtime_checkable
class ToolEnv(Protocol):
    """One episode's environment. ``reset`` is called once with the task row before anything else."""

    name: ClassVar[str]                 # the registry key a row names in ``env``
    intro: ClassVar[str]                # the system prompt's first line (the tools section follows)
    stop_after_calls: ClassVar[bool]    # True: the episode ends at the first turn with calls, which are not run
    blocking: ClassVar[bool]            # True: ``step`` waits (on the sandbox): the loop steps episodes in threads

    def tools(self) -> list[dict]:
        """The tools of this episode as OpenAI-style JSON schemas."""

    def reset(self, row: dict) -> dict:
        """Start from the task row; returns the state (JSON-serialisable)."""

    def step(self, call: ToolCall) -> str:
        """Answer one call (a malformed call, ``call.error``, or an unknown tool is an error observation)."""

    def verify(self, trace: Trace, row: dict) -> Verdict:
        """Judge a finished episode; ``details["failed_checks"]`` names what failed (empty: score 1)."""


ENVS: dict[str, type] = {}


def register_env(cls: type) -> type:
    ENVS[cls.name] = cls
    return cls


def env_name(row: dict) -> str:
    return row.get("env") or "inventory"


def env_class(row: dict) -> type:
    name = env_name(row)
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; expected one of {', '.join(ENVS)}")
    return ENVS[name]


def make_env(row: dict):
    """A fresh environment of the row's kind, reset to the row."""
    env = env_class(row)()
    env.reset(row)
    return env


def system_text(row: dict) -> str:
    """The system prompt of the row's episode: the environment's intro, then its tools section -- the text
    ``core.chat`` renders for ``{"role": "system", "content": intro, "tools": tools}``."""
    env = make_env(row)
    intro = row.get("system") or env.intro
    return (intro + "\n\n" if intro else "") + render_tools(env.tools())
