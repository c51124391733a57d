"""Where a stage's actors go: the Ray placement group a stage runs in, and the fleet's.

``stage_layout(spec)`` turns a stage's resources, its ``placement`` and its kind's ``Workload`` into bundles, one per
learner rank (rank 0 is the stage's own task) and, for distillation, the teachers' GPUs:

* **split**: ``placement.teacher_gpus`` GPUs (default a quarter of the stage's, at least 1) are the teachers' own
  bundles; the learner's ranks take the rest, one GPU each.
* **colocate** (default): the teachers share the learner ranks' bundles: each rank holds half of its GPU, the
  teachers of that bundle split the other half (Ray's fractional GPUs: the same physical device).
* On CPU: one bundle per rank with ``num_cpus / ranks`` CPUs; teachers ask for nothing (they run in bundle 0 with no
  resources), as do the reward workers and the in-process transformers engine.

The runner builds the group (``STRICT_PACK``: a stage is on one node), starts the stage's task in bundle 0 and hands
the layout and the group to the stage (``ctx.services["placement"]``), which places every actor it starts inside
it; ``pipeline plan`` prints the same layout. The rollout engines are the fleet's: ``fleet_layout`` gives them one
bundle each (their tensor-parallel GPUs), held for the whole run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from core.registry import STAGE_KINDS


@dataclass
class Layout:
    bundles: list[dict]                         # Ray bundles, e.g. {"CPU": 4.0, "GPU": 1.0}
    ranks: list[int]                            # bundle index of each learner rank (rank 0: the stage's task)
    rank_resources: dict                        # what each rank asks of its bundle ({"num_cpus", "num_gpus"})
    teacher_bundles: list[int] = field(default_factory=list)   # bundle of each teacher, in teacher order
    teacher_gpus: float = 0.0                   # num_gpus each teacher actor asks of its bundle
    gpus: dict = field(default_factory=dict)    # bundle index -> node-local GPU indices (for printing)
    strategy: str = "-"
    engine_bundles: list[list[int]] = field(default_factory=list)   # fleet: the bundles of each engine

    def describe(self) -> list[str]:
        out = []
        for i, b in enumerate(self.bundles):
            who = [f"rank {r}" for r, bi in enumerate(self.ranks) if bi == i]
            t = [j for j, bi in enumerate(self.teacher_bundles) if bi == i]
            if t:
                who.append(f"teachers {t[0]}-{t[-1]}" if len(t) > 1 else f"teacher {t[0]}")
            who += [f"engine {e}" + (f" (TP worker {eb.index(i)})" if len(eb) > 1 else "")
                    for e, eb in enumerate(self.engine_bundles) if i in eb]
            res = ", ".join(f"{k} {v:g}" for k, v in b.items())
            gp = f" GPU {','.join(map(str, self.gpus[i]))}" if self.gpus.get(i) else ""
            out.append(f"bundle {i} [{res}]{gp}: {', '.join(who) or '-'}")
        return out


def gpu_ids(start: float, share: float) -> list[int]:
    """Node-local GPU indices a bundle covers when bundles take ``share`` GPUs each in order from ``start`` (for
    printing and memory accounting): whole GPUs, or the one GPU a fraction sits on (two 0.5 bundles: GPU 0)."""
    if share <= 0:
        return []
    first = int(math.floor(start + 1e-9))
    return list(range(first, max(first + 1, int(math.ceil(start + share - 1e-9)))))


def learner_ranks(spec, workload) -> int:
    """``learner.ranks``, else the stage's GPUs for the learner (split: minus the teachers'), else 1."""
    explicit = getattr(workload.learner, "ranks", None) if workload.learner is not None else None
    if explicit:
        return int(explicit)
    g = int(math.ceil(spec.resources.num_gpus))
    return max(1, g - _teacher_gpus(spec, workload)) if g else 1


def _teacher_gpus(spec, workload) -> int:
    g = int(math.ceil(spec.resources.num_gpus))
    p = workload.placement
    if not g or not workload.teachers or p is None or p.strategy != "split":
        return 0
    return p.teacher_gpus if p.teacher_gpus is not None else max(1, g // 4)


def stage_layout(spec, workload=None) -> Layout:
    """The bundles of one stage (see the module docstring). Raises ValueError when they cannot be formed."""
    w = workload if workload is not None else STAGE_KINDS[spec.kind].workload(spec)
    res = spec.resources
    total = float(res.num_gpus)                  # may be a fraction of one GPU (Ray's fractional GPUs)
    G, C = int(math.ceil(total)), float(res.num_cpus)
    strategy = w.placement.strategy if w.placement is not None else "-"
    if w.learner is None:                        # no training: the stage's task alone
        b = {"CPU": C, **({"GPU": total} if G else {})}
        return Layout([b], [0], {"num_cpus": C, "num_gpus": total}, gpus={0: gpu_ids(0, total)}, strategy=strategy)
    tg = _teacher_gpus(spec, w)
    ranks = learner_ranks(spec, w)
    lg = G - tg
    if G and tg >= G:
        raise ValueError(f"{spec.id}: placement.teacher_gpus {tg} leaves no GPU for the learner (the stage has {G})")
    if G and ranks > lg:
        raise ValueError(f"{spec.id}: learner.ranks {ranks} > the {lg} GPU(s) the stage gives its learner")
    cpus = C / ranks
    per_rank_gpu = (total - tg) / ranks if G else 0.0
    bundles = [{"CPU": cpus, **({"GPU": per_rank_gpu} if G else {})} for _ in range(ranks)]
    gpus = {r: gpu_ids(r * per_rank_gpu, per_rank_gpu) for r in range(ranks)} if G else {}
    n_t = len(w.teachers)
    teacher_bundles, teacher_share, rank_gpu = [], 0.0, per_rank_gpu
    if G and n_t:
        if tg:                                   # split: the teachers' own GPUs
            first = len(bundles)
            bundles += [{"GPU": 1.0} for _ in range(tg)]
            gpus.update({first + j: [lg + j] for j in range(tg)})
            teacher_bundles = [first + j % tg for j in range(n_t)]
            teacher_share = 1.0 / math.ceil(n_t / tg)
        else:                                    # colocate: half of each learner GPU
            rank_gpu = per_rank_gpu / 2
            teacher_bundles = [j % ranks for j in range(n_t)]
            teacher_share = per_rank_gpu / 2 / math.ceil(n_t / ranks)
    elif n_t:
        teacher_bundles = [0] * n_t              # CPU teachers: no resources, inside the group
    return Layout(bundles, list(range(ranks)), {"num_cpus": cpus, "num_gpus": rank_gpu}, teacher_bundles,
                  teacher_share, gpus, strategy)


def fleet_layout(cfg) -> Layout:
    """The engines' bundles, in engine order, for the whole run (``rollout.config.engine_bundles``): TP 1 one
    bundle per engine (its CPUs and GPU share); TP > 1 one bundle per GPU, the engine's CPUs in its first (vLLM's
    Ray executor puts a worker in each and refuses a bundle of more GPUs). Engines that ask for nothing (CPU engines
    with ``num_cpus: 0``) have empty bundles: the runner then builds no group for them (a token CPU reservation would
    keep a 1-CPU stage from starting beside another on a 2-core machine). Raises ValueError when TP > 1 and an
    engine's GPUs are not its tensor-parallel size."""
    from rollout.config import engine_bundles

    r, tp = cfg.resources, cfg.tensor_parallel_size
    per = engine_bundles(tp, r.num_gpus, r.num_cpus)
    bundles = [dict(b) for _ in range(cfg.engines) for b in per]
    gpus, at = {}, 0.0
    for i, b in enumerate(bundles):
        if b.get("GPU"):
            gpus[i], at = gpu_ids(at, b["GPU"]), at + b["GPU"]
    return Layout(bundles, [], {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus}, gpus=gpus, strategy="fleet",
                  engine_bundles=[list(range(e * len(per), (e + 1) * len(per))) for e in range(cfg.engines)])


def engine_gpus(layout: Layout, engine: int) -> list[int]:
    """Node-local GPU indices of one engine of a ``fleet_layout`` (all its bundles')."""
    return sorted({g for b in layout.engine_bundles[engine] for g in layout.gpus.get(b, [])})
