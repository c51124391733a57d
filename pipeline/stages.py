"""Imports every built-in stage kind so that it registers itself (the runner's only link to the stages)."""
from . import bootstrap  # noqa: F401
from specialists import grpo, sft  # noqa: F401
from distill import stage as _distill  # noqa: F401
from . import eval_stage  # noqa: F401
