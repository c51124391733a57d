"""ToolTalk's conversations from the installed ``nvidia-tooltalk`` package as agent task rows, no hub.

The package ships 78 conversations as JSON: ``data/easy`` (28, one API each) and ``data/tooltalk`` (50, several
suites). Each has ``metadata`` (location, timestamp, the logged-in user's session), ``user`` (the account), and
``conversation``: user and assistant turns, an assistant turn with the API calls it made (``apis``: request,
response, exception) before its text. ``conversation_rows`` makes one row per assistant turn, as ToolTalk's own
evaluation predicts them (``ToolExecutor.run_conversation``): the earlier turns, with their ground-truth calls and
results, are the history; the model calls APIs until it answers; the environment (``rewards.envs.tooltalk``) executes
its calls and scores them with ToolTalk's checker.

* ``prompt``: the user turn(s) since the last assistant turn; ``history``: the turns before (messages, JSON);
  ``system``: ToolTalk's system prompt (location, timestamp, username);
* ``messages``: history, prompt and the demonstration -- one assistant message per ground-truth call (the session
  token left out: the executor adds it), its result as a ``tool`` message, then the turn's text -- for SFT;
* ``tooltalk`` (JSON): metadata, user, the earlier turns' calls (``api_history``) and this turn's (``apis``);
  ``api_names``: the APIs shown as tools, by ``api_mode`` -- ToolTalk's three: ``all`` (its default: the 28),
  ``suite`` (those of the suites the conversation uses), ``exact`` (those it uses).

A conversation's turns stay in one split: ``test`` (held out) for one conversation name in ``HELD_OUT_EVERY`` by a
hash, else ``train``. Rows longer than ``max_chars`` (system prompt, tool docs and history) are left out (a small
model's context). Rows go through ``rewards.tasks.rows.read_row`` like any agent row.

Recipe: ``tasks.agent: {source: tooltalk, tooltalk: {subsets: [easy, tooltalk], api_mode: exact, max_chars: 3000}}``
(docs/data.md).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

SUBSETS = ("easy", "tooltalk")
API_MODES = ("all", "suite", "exact")
HELD_OUT_EVERY = 4          # one conversation in 4 is held out
SYSTEM = ("You are a helpful assistant. Here is some user data:\nlocation: {location}\ntimestamp: {timestamp}"
          "\nusername (if logged in): {username}")          # ToolTalk's (evaluation/evaluate_openai.py)


class ToolTalkError(ValueError):
    """A bad ToolTalk file or conversation; ``str(err)`` is the one line to print."""


def split_of(name: str) -> str:
    """``test`` (held out) or ``train``, from a hash of the conversation's name."""
    return "test" if int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % HELD_OUT_EVERY == 0 else "train"


def conversation_files(subsets) -> list[Path]:
    from ..envs.tooltalk import tooltalk_modules

    root = tooltalk_modules()["root"] / "data"
    out = []
    for s in subsets:
        if s not in SUBSETS:
            raise ToolTalkError(f"unknown ToolTalk subset {s!r} (known: {', '.join(SUBSETS)})")
        files = sorted((root / s).glob("*.json"))
        if not files:
            raise ToolTalkError(f"{root / s}: no conversations (nvidia-tooltalk installed without its data?)")
        out += files
    return out


def read_conversation(path: Path) -> dict:
    try:
        conv = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ToolTalkError(f"{path}: not JSON ({e})") from None
    for key in ("name", "metadata", "conversation"):
        if key not in conv:
            raise ToolTalkError(f"{path}: {key}: missing")
    return conv


def api_names(conv: dict, api_mode: str) -> list[str]:
    """The APIs shown as tools for this conversation under ToolTalk's ``api_mode``."""
    from ..envs.tooltalk import tooltalk_modules

    apis = tooltalk_modules()["apis"]
    if api_mode == "exact":
        return list(conv.get("apis_used") or [])
    if api_mode == "suite":
        return [a.__name__ for s in conv.get("suites_used") or [] for a in apis.SUITES_BY_NAME[s].apis]
    if api_mode == "all":
        return [a.__name__ for a in apis.ALL_APIS]
    raise ToolTalkError(f"unknown api_mode {api_mode!r} (known: {', '.join(API_MODES)})")


def _call(api: dict) -> dict:
    """A ground-truth call as the model writes it: the session token left out where the executor adds it."""
    from ..envs.tooltalk import requires_auth

    req = api["request"]
    args = {k: v for k, v in (req.get("parameters") or {}).items()
            if not (k == "session_token" and requires_auth(req["api_name"]))}
    return {"name": req["api_name"], "arguments": args}


def _api_messages(apis: list[dict]) -> list[dict]:
    """One assistant message per call, each followed by its result (ToolTalk predicts calls one at a time)."""
    from ..envs.tooltalk import observation

    out = []
    for a in apis:
        out.append({"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": _call(a)}]})
        out.append({"role": "tool", "content": observation(a)})
    return out


def conversation_rows(conv: dict, api_mode: str = "all") -> list[dict]:
    """One row per assistant turn of ``conv`` (see the module doc); raises ``rows.Bad`` naming the field."""
    from .rows import Bad

    meta, user = conv["metadata"], conv.get("user") or {}
    system = SYSTEM.format(location=meta.get("location"), timestamp=meta.get("timestamp"),
                           username=meta.get("username"))
    names = api_names(conv, api_mode)
    history: list[dict] = []            # messages before the pending user turn(s)
    pending: list[str] = []             # user turns since the last assistant turn
    api_history: list[dict] = []
    rows = []
    for j, turn in enumerate(conv["conversation"]):
        role, text = turn.get("role"), turn.get("text")
        if role == "user":
            pending.append(text or "")
            continue
        if role != "assistant":
            raise Bad(f"conversation[{j}].role", f"expected user or assistant, got {role!r}")
        if not pending:
            raise Bad(f"conversation[{j}]", "an assistant turn with no user turn before it")
        apis = turn.get("apis") or []
        final = {"role": "assistant", "content": text or ""}
        asks = {"role": "user", "content": "\n\n".join(pending)}     # consecutive user turns: one message
        rows.append({"id": f"tooltalk/{conv['name']}/{j}", "env": "tooltalk",
                     "prompt": asks["content"], "system": system, "history": json.dumps(history),
                     "messages": [{"role": "system", "content": system}, *history,
                                  asks, *_api_messages(apis), final],
                     "tooltalk": json.dumps({"metadata": meta, "user": user, "api_history": api_history,
                                             "apis": apis, "conversation": conv["name"], "turn": j}),
                     "api_names": json.dumps(names), "max_turns": len(apis) + 2})
        history = [*history, asks, *_api_messages(apis), final]
        api_history = [*api_history, *apis]
        pending = []
    return rows


def load_tooltalk(domain: str, split: str, n: int, source: dict) -> list[dict]:
    """The first ``n`` rows of the conversations in ``split`` (``source["tooltalk"]``: ``subsets``, ``api_mode``,
    ``max_chars``), conversations in file order, subsets interleaved. A bad conversation raises
    ``rows.RowError``: ``tasks.<domain>: tooltalk:<file> row <turn>: <field>: <problem>``."""
    from ..envs.tooltalk import ToolTalkMissing
    from .rows import Bad, RowError, read_row

    opts = source.get("tooltalk") or {}
    policy = source.get("sft_modes") or "by_reasoning"
    if domain != "agent":
        raise RowError(f"tasks.{domain}: source: tooltalk gives tool-use rows of the agent domain")
    want = "test" if split == "test" else "train"
    try:
        per = [[(f, read_conversation(f)) for f in conversation_files([s])] for s in opts.get("subsets") or SUBSETS]
    except (ToolTalkMissing, ToolTalkError) as e:
        raise RowError(f"tasks.{domain}: tooltalk: {e}") from None
    convs = [c for k in range(max(map(len, per))) for c in (p[k] for p in per if k < len(p))]   # interleaved
    out = []
    for f, conv in convs:
        if split_of(conv["name"]) != want:
            continue
        label = f"tooltalk:{f.parent.name}/{f.name}"
        try:
            rows = conversation_rows(conv, opts.get("api_mode") or "all")
        except Bad as e:
            raise RowError(f"tasks.{domain}: {label}: {e.field}: {e.problem}") from None
        except (ToolTalkError, KeyError) as e:
            raise RowError(f"tasks.{domain}: {label}: {e}") from None
        for k, row in enumerate(rows):
            if opts.get("max_chars") and prompt_chars(row) > opts["max_chars"]:
                continue
            try:
                s = {**row, **read_row(row, "agent", "messages")}
            except Bad as e:
                raise RowError(f"tasks.{domain}: {label} row {k}: {e.field}: {e.problem}") from None
            s.pop("messages", None)
            s["domain"] = "agent"
            s["origin"] = {"source": label, "row": k, "format": s.pop("format"), "sft_modes": policy}
            out.append(s)
            if len(out) >= n:
                return out
    return out


def prompt_chars(row: dict) -> int:
    """The size of what the prompt shows: system prompt, tool docs (JSON) and history."""
    from ..envs.tooltalk import api_schema

    docs = json.dumps([api_schema(a) for a in json.loads(row["api_names"])], ensure_ascii=False)
    return len(row["system"]) + len(docs) + len(row["history"]) + len(row["prompt"])
