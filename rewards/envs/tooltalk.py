"""ToolTalk (the ``nvidia-tooltalk`` package, MIT): ToolTalk's executable mock APIs as a tool environment.

ToolTalk's 78 conversations (``rewards.tasks.tooltalk``) use 28 mock APIs in 7 suites (accounts, alarms, calendar,
email, messages, reminders, weather) over JSON databases. An episode is one assistant turn of a conversation, as
ToolTalk's own evaluation runs it (``ToolExecutor.run_conversation``): the databases are reset, the ground-truth API
calls of the earlier turns are replayed (``init_conversation_state``), the model calls APIs -- each one executed by
ToolTalk's ``ToolExecutor``, its ``{"response", "exception"}`` the observation -- until it answers in text.

``verify`` replays the episode's counted calls on a fresh executor (a transcript's observations are never trusted)
and scores them with ToolTalk's own ``evaluate_predictions`` against the turn's ground-truth calls: a call matches
when its response and exception equal the ground truth's and the parameters agree (each API's own
``check_api_call_correctness``); a *bad action* is a successful call of an action API (one that changes a database)
that matches nothing. Score 1 when every ground-truth call is matched and there is no bad action (ToolTalk's
``success``, here per turn rather than per conversation) and the episode ended with a text answer.

**Free-text parameters** (an event's name, an email's subject and body, a message, a reminder's task): ToolTalk
compares them with ``semantic_str_compare``, the cosine of DistilBERT embeddings that it downloads from the Hugging
Face hub at first use (and it imports torch and transformers to do so). No code path here loads from a hub, and
``rewards`` imports no torch, so :func:`text_similarity` stands in: the cosine of word-count vectors (with one
shared constant term, so an empty text is not similar to everything), under ToolTalk's own thresholds (0.8 and 0.9).
It is stricter than the official check: a paraphrase with other words fails where DistilBERT may pass it; the gold
text itself scores 1.0. ``tooltalk.apis.utils`` is replaced by a module that holds ToolTalk's two format checks and
this similarity before ToolTalk's APIs are imported (:func:`tooltalk_modules`).

Row fields (``rewards.tasks.tooltalk.conversation_rows`` writes them): ``tooltalk`` (JSON: ``metadata``, ``user``,
``api_history``: the earlier turns' ground-truth calls, ``apis``: this turn's), ``api_names`` (JSON list: the APIs
shown as tools), ``system`` (ToolTalk's system prompt), ``history`` (the earlier turns as messages), ``max_turns``.
"""
from __future__ import annotations

import copy
import importlib
import json
import math
import re
import sys
import threading
import types
from collections import Counter
from pathlib import Path

from core.chat import ToolCall

from ..verdict import Verdict
from .base import Trace, register_env

TOOLTALK_PACKAGE = "nvidia-tooltalk"
TOOLTALK_VERSION = "26.3"           # the version pyproject's `tooltalk` extra and the Makefile install
INSTALL_HINT = f"pip install --no-deps {TOOLTALK_PACKAGE}=={TOOLTALK_VERSION}"
_LOCK = threading.Lock()
_MODULES: dict | None = None
_WORD = re.compile(r"\w+")


class ToolTalkMissing(ImportError):
    """The nvidia-tooltalk package is not installed; ``str(err)`` is the one line to print."""


def text_similarity(prediction: str | None, truth: str) -> float:
    """ToolTalk's ``semantic_str_compare`` without a hub model: the cosine of lowercased word counts, plus one
    constant term both texts share (an empty prediction against a one-word truth: 0.71). ``None``: 0.0, as ToolTalk's."""
    if prediction is None:
        return 0.0
    a = Counter(_WORD.findall(str(prediction).lower()))
    b = Counter(_WORD.findall(str(truth).lower()))
    dot = 1 + sum(n * b[w] for w, n in a.items())
    return dot / math.sqrt((1 + sum(n * n for n in a.values())) * (1 + sum(n * n for n in b.values())))


def _verify_phone_format(phone_number: str) -> bool:       # ToolTalk's, from tooltalk/apis/utils.py
    return re.match(r"^\d{3}-\d{3}-\d{4}$", phone_number) is not None


def _verify_email_format(email: str) -> bool:               # ToolTalk's, from tooltalk/apis/utils.py
    return re.match(r"^[\w\-\d\.]+@[\w\-\d\.]+$", email) is not None


UTILS_FUNCTIONS = {"verify_phone_format": _verify_phone_format, "verify_email_format": _verify_email_format,
                   "semantic_str_compare": text_similarity}
_TEXT_APIS = ("calendar", "email", "message", "reminder")   # the API modules that import semantic_str_compare


def tooltalk_modules() -> dict:
    """``{"apis", "executor", "root"}``: ToolTalk's API registry module, its ``ToolExecutor`` class and the package's
    folder, with :data:`UTILS_FUNCTIONS` in place of ``tooltalk.apis.utils`` (no torch, no hub)."""
    global _MODULES
    with _LOCK:
        if _MODULES is None:
            if importlib.util.find_spec("tooltalk") is None:
                raise ToolTalkMissing(f"needs the {TOOLTALK_PACKAGE} package, which is not installed "
                                      f"({INSTALL_HINT}; `make setup` installs it)")
            if "tooltalk.apis.utils" not in sys.modules:
                stub = types.ModuleType("tooltalk.apis.utils")
                stub.__dict__.update(UTILS_FUNCTIONS)
                sys.modules["tooltalk.apis.utils"] = stub
            apis = importlib.import_module("tooltalk.apis")
            for name in _TEXT_APIS:      # also when ToolTalk's own utils was imported first (torch and all)
                importlib.import_module(f"tooltalk.apis.{name}").semantic_str_compare = text_similarity
            executor = importlib.import_module("tooltalk.evaluation.tool_executor").ToolExecutor
            _MODULES = {"apis": apis, "executor": executor, "root": Path(apis.__file__).parent.parent}
        return _MODULES


def api_classes() -> dict[str, type]:
    """ToolTalk's APIs by name (``AddAlarm``, ...)."""
    return {a.__name__: a for a in tooltalk_modules()["apis"].ALL_APIS}


def api_schema(name: str) -> dict:
    """An API's doc (ToolTalk's ``to_openai_doc``, whose ``required`` sits beside ``parameters``) as a tool schema."""
    doc = api_classes()[name].to_openai_doc()
    params = {**doc["parameters"], "required": list(doc.get("required") or [])}
    return {"type": "function", "function": {"name": doc["name"], "description": doc["description"],
                                             "parameters": params}}


def requires_auth(name: str) -> bool:
    """Whether the executor adds the session token to the API's call (the model never writes it)."""
    cls = api_classes().get(name)
    return bool(cls is not None and cls.requires_auth)


def new_executor():
    """ToolTalk's ``ToolExecutor`` on the package's databases (64 KB of JSON; ``init_conversation_state`` re-reads
    them for every episode, as ToolTalk's evaluation does)."""
    m = tooltalk_modules()
    return m["executor"](init_database_dir=str(m["root"] / "data" / "databases"))


def _loads(value):
    return json.loads(value) if isinstance(value, str) else value


def observation(response: dict) -> str:
    """What the model reads for one call: ToolTalk's function-message content, ``{"response", "exception"}``."""
    return json.dumps({"response": response.get("response"), "exception": response.get("exception")},
                      ensure_ascii=False, default=str)


@register_env
class ToolTalkEnv:
    name = "tooltalk"
    intro = "You are a helpful assistant."
    stop_after_calls = False
    blocking = False

    def __init__(self):
        self.row: dict = {}
        self.executor = None
        self.predictions: list[dict] = []      # ToolTalk's prediction records of the calls executed, in order

    def tools(self) -> list[dict]:
        return [api_schema(n) for n in _loads(self.row["api_names"])]

    def reset(self, row: dict) -> dict:
        spec = _loads(row["tooltalk"])
        self.row, self.predictions = row, []
        self.executor = new_executor()
        self.executor.init_conversation_state(spec["metadata"], copy.deepcopy(spec.get("api_history") or []),
                                              dict(spec.get("user") or {}))
        return {"session_token": self.executor.session_token}

    def step(self, call: ToolCall) -> str:
        """Execute one call through ToolTalk's executor (an unknown API, a missing login or an API error is its
        ``exception``; a malformed call or an API that raises is one too)."""
        if call.error or not isinstance(call.arguments, dict):
            request = {"api_name": call.name or "", "parameters": {}}
            response = {"response": None, "exception": f"Failed to parse API call: {call.error or 'bad arguments'}"}
        else:
            try:
                request, response = self.executor.execute_tool(call.name, dict(call.arguments))
            except Exception as e:  # noqa: BLE001 -- a mock API raising on odd arguments is the call's exception
                request = {"api_name": call.name, "parameters": dict(call.arguments)}
                response = {"response": None, "exception": f"{type(e).__name__}: {str(e)[:200]}"}
        self.predictions.append({"role": "api", "request": request, "response": response["response"],
                                 "exception": response["exception"]})
        return observation(response)

    def verify(self, trace: Trace, row: dict) -> Verdict:
        env = ToolTalkEnv()
        env.reset(row)
        for c in trace.all_calls():
            env.step(c)
        checks, metrics = [], {}
        try:
            metrics = turn_metrics(env.executor, env.predictions, _loads(row["tooltalk"]).get("apis") or [])
        except Exception as e:  # noqa: BLE001 -- named in the verdict, never a silent zero
            checks.append(f"tooltalk_checker_error: {type(e).__name__}: {str(e)[:120]}")
        if trace.final is None:
            checks.append("no_final_answer_within_turn_cap")
        if metrics and metrics["recall"] < 1.0:
            checks.append("missed_calls")
        if metrics and metrics["bad_actions"]:
            checks.append("bad_actions")
        return Verdict(0.0 if checks else 1.0, {"failed_checks": checks, "tooltalk": metrics,
                                                "observations": [observation(p)[:200] for p in env.predictions]})


def turn_metrics(executor, predictions: list[dict], truth: list[dict]) -> dict:
    """ToolTalk's metrics (``ToolExecutor.evaluate_predictions``) of one assistant turn's calls against its
    ground-truth calls. A turn with no ground-truth call (ToolTalk divides by their number) has recall 1 and the
    same bad-action rule: a successful action call there is a bad action."""
    preds = copy.deepcopy(predictions)
    if truth:
        conv = {"conversation": [{"role": "assistant", "predictions": preds, "apis": copy.deepcopy(truth)}]}
        return executor.evaluate_predictions(conv)["metrics"]
    actions = [p for p in preds if executor.is_action(p["request"]["api_name"])]
    bad = sum(p["exception"] is None for p in actions)
    return {"predictions": len(preds), "ground_truths": 0, "matches": 0, "actions": len(actions),
            "valid_actions": 0, "bad_actions": bad, "precision": 0, "recall": 1.0,
            "action_precision": 0 if actions else 1, "bad_action_rate": bad / len(actions) if actions else 0,
            "success": bad == 0, "soft_success": 1.0 - (bad / len(actions) if actions else 0)}
