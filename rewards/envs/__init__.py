"""Tool environments for the agent domain behind one small interface, chosen per task row (``row["env"]``).

Each environment (``ToolEnv``, ``base.py``) gives its tools as OpenAI-style JSON schemas (shown in the system
prompt by ``core.chat.render_tools``), starts from a task row (``reset``), answers one tool call with an observation
string (``step``), and judges a finished episode (``verify``: a ``Trace`` of the calls that counted, the row ->
``Verdict``):

* ``inventory`` (``inventory.py``): a deterministic shop inventory; the verifier replays the calls on a fresh copy
  and compares final states, and checks the answer;
* ``bfcl`` (``bfcl.py``): BFCL-style function calling; calls are not executed, the episode ends at the first turn
  with calls, and ``verify`` compares those calls with the row's ground truth through a pluggable checker;
* ``python`` (``python.py``): ``run_python(code)`` runs code in the code sandbox (``rewards.sandbox``) and returns
  its status, stdout and stderr; the verifier runs the row's tests on the final answer's code;
* ``tooltalk`` (``tooltalk.py``): ToolTalk's 28 mock APIs over JSON databases (nvidia-tooltalk), executed by
  ToolTalk's ``ToolExecutor``; the verifier replays the calls and scores them with ToolTalk's own checker.

The tool-call format (DeepSeek-V4's DSML block) and its parser live in ``core.chat``; they are re-exported here.
"""
from __future__ import annotations

from core.chat import ToolCall, format_tool_call, format_tool_calls, parse_tool_calls

from .base import (ENVS, MAX_OBS_CHARS, ToolEnv, Trace, clean_observation, env_class, env_name, make_env,
                   register_env, system_text, tool_schema)
from .bfcl import BfclEnv, register_checker
from .inventory import InventoryEnv, replay
from .python import PythonEnv
from .tooltalk import ToolTalkEnv

__all__ = ["ENVS", "MAX_OBS_CHARS", "BfclEnv", "InventoryEnv", "PythonEnv", "ToolCall", "ToolTalkEnv", "ToolEnv", "Trace",
           "clean_observation", "env_class", "env_name", "format_tool_call", "format_tool_calls", "make_env",
           "parse_tool_calls", "register_checker", "register_env", "replay", "system_text", "tool_schema"]
