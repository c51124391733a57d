"""Imports every built-in stage kind's declaration so that it registers itself (the orchestrator's only link to the
stages). Declarations are light (pydantic configs, no torch); each kind's run function is imported by name inside the
stage's Ray worker."""
import distill.config  # noqa: F401  (generalist, distill)
import specialists.config  # noqa: F401  (sft, grpo)
import train.config  # noqa: F401  (bootstrap, eval)
import train.union_config  # noqa: F401  (base)
