"""`pipeline plan RECIPE [--cluster ...]`: a dry run that places every actor and estimates its memory.

For each stage of the recipe's graph it prints where the stage goes (node, GPUs), the actors inside it and, per
actor, the memory of each part (``memory.py``: the model; ``render.py``: the printing). It exits 2 with one line on
stderr when the described cluster cannot hold it.
"""
from .dims import Cluster, Dims, dims_from_config, local_machine, model_dims, parse_cluster  # noqa: F401
from .memory import build_plan, check_fit, learner_parts, plan_stage  # noqa: F401
from .render import main_plan, render  # noqa: F401
