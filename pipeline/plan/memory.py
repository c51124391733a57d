"""The memory model behind `pipeline plan`: model dimensions, the cluster, and per-actor memory of every stage.

Each stage kind describes what it asks of a machine as numbers (``core.registry.Workload``: learner tokens per
micro-batch, sequences generated, engine, teachers, ...); ``plan_stage`` turns a workload into actors -- the learner
(ZeRO-sharded over its GPUs), the rollout engines (tensor parallel, optionally FP4 weights), the teachers, a frozen
reference model, the reward workers -- with the memory of weights, KV cache, optimizer states, gradients,
activations (with and without gradient checkpointing), logits and the teacher payload; ``check_fit`` says what the
described cluster cannot hold. Arithmetic only: nothing is loaded, nothing downloaded. The formulas and their
assumptions are in docs/scaling.md ("Memory math").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from core.registry import STAGE_KINDS
from distill.kl import teacher_payload_bytes

from ..recipe import LearnerConfig, Recipe, RecipeError
from ..placement import engine_gpus, fleet_layout, stage_layout
from .dims import GB, Cluster, Dims, model_dims

PROMPT_TOKENS = 512          # assumed prompt length for RL / distillation rollouts (completions use the mode budget)
ACT_BYTES_PER_H = 34         # activations per token per layer ~ 34*H bytes in bf16 (Korthikanti et al. 2022,
                             # flash/SDPA attention: no s^2 term); fp32 doubles it
FP4_BYTES = 4.25 / 8         # MXFP4: 4-bit elements + one 8-bit E8M0 scale per 32 values
REWARD_WORKER_GB = 0.3       # one verifier process (math-verify / sandbox zygote child)
LEARNER_HEADROOM = 0.9       # the fraction of a GPU the learner + co-resident actors may plan to use
CHUNK = 1024                 # rows per chunk of the fused full-vocabulary loss (distill.chunk_size default)


# ---------------------------------------------------------------------------------------------------------------
# actors


@dataclass
class Actor:
    name: str
    where: str = ""
    gpus: list[int] = field(default_factory=list)   # GPU indices within the stage's node; [] = CPU / RAM
    parts: dict = field(default_factory=dict)       # component -> bytes (per GPU, or total in RAM)
    notes: list[str] = field(default_factory=list)
    alt: dict = field(default_factory=dict)         # alternatives shown, not summed (e.g. no checkpointing)

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def _fmt(b: float) -> str:
    if b >= 1e12:
        return f"{b / 1e12:.3g} TB"
    if b >= 1e9:
        return f"{b / 1e9:.3g} GB"
    if b >= 1e6:
        return f"{b / 1e6:.3g} MB"
    return f"{b / 1e3:.3g} kB"


def learner_parts(d: Dims, cfg: LearnerConfig, world: int, tokens: float, logits_tokens: float, on_gpu: bool,
                  fused_logits: bool = False) -> tuple[dict, dict, list[str]]:
    """Per-GPU (or in-RAM) learner memory: weights, grads, optimizer, activations, logits."""
    n, z = d.params, cfg.zero_stage
    bf16 = cfg.precision == "bf16"
    wb = 2 if (bf16 and z > 0) else 4  # DeepSpeed bf16 keeps bf16 weights (+ fp32 master); accelerate autocast: fp32
    opt = 8 * n if cfg.optimizer == "adamw" else 4 * (n - d.adam_params) + 8 * d.adam_params
    master = 4 * n if wb == 2 else 0
    shard_w = world if z == 3 else 1
    shard_g = world if z >= 2 else 1
    shard_o = world if z >= 1 else 1
    act_b = ACT_BYTES_PER_H * (1 if bf16 else 2)
    per_tok_layer = act_b * d.hidden + d.moe_act_per_token_layer
    act_full = tokens * d.layers * per_tok_layer
    act_ckpt = tokens * d.layers * d.hidden * (2 if bf16 else 4) + tokens * per_tok_layer
    logits = (3 * min(logits_tokens, CHUNK) if fused_logits else 2 * logits_tokens) * d.vocab * 4
    parts = {"weights": n * wb / shard_w, "grads": n * wb / shard_g, "optim": (opt + master) / shard_o,
             "acts": act_full, "logits": logits}
    notes = [f"{'ZeRO-%d x%d' % (z, world) if z else ('DDP x%d' % world if world > 1 else 'single')} "
             f"{'bf16' if bf16 else 'fp32'} {cfg.optimizer}"
             + (" +master fp32" if master else "") + (" qat=mxfp4" if cfg.qat != "none" else "")]
    return parts, {"acts_ckpt": act_ckpt}, notes


def engine_weight_bytes(d: Dims, fp4: bool, dtype_bytes: int = 2) -> float:
    return (d.params - d.fp4_params) * dtype_bytes + d.fp4_params * FP4_BYTES if fp4 else d.params * dtype_bytes


@dataclass
class StagePlan:
    id: str
    kind: str
    gpus: float                                   # may be a fraction of one GPU
    cpus: float
    actors: list[Actor]
    placement: str
    node: int | None = None
    wave: int = 0
    gpu_use: dict = field(default_factory=dict)   # gpu index -> bytes
    ram_use: float = 0.0
    custom: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    layout: object = None                         # pipeline.placement.Layout: the bundles the runner builds


def plan_stage(recipe: Recipe, spec, dims: Dims) -> StagePlan:
    """The actors of one stage and their memory, from the stage kind's ``Workload``, placed on the bundles
    ``pipeline.placement.stage_layout`` gives (the layout the runner builds)."""
    res = spec.resources
    G = int(math.ceil(res.num_gpus))
    on_gpu = G > 0
    w = STAGE_KINDS[spec.kind].workload(spec)
    try:
        layout = stage_layout(spec, w)
    except ValueError as e:
        raise RecipeError(str(e)) from None
    actors: list[Actor] = []
    sp = StagePlan(spec.id, spec.kind, float(res.num_gpus), res.num_cpus, actors, layout.strategy,
                   custom=dict(res.custom), layout=layout)
    if w.loads_model_only:
        wb = 4 if recipe.model.dtype == "float32" else 2
        actors.append(Actor("loader", parts={"weights": dims.params * wb},
                            notes=["builds/loads the model once, writes final/ (RAM)"]))
        sp.gpus = 0
        return sp
    if w.evaluates:
        if w.engine is not None and w.engine.kind == "hf":
            actors.append(Actor("engine", parts={"weights": engine_weight_bytes(dims, False, 2 if on_gpu else 4)},
                                notes=["one model at a time (transformers)"], gpus=[0] if on_gpu else []))
        actors.append(_rewards(w.reward_workers))
        return sp

    teachers = [(name, dims if path is None else model_dims(recipe, path, what="teacher")) for name, path in w.teachers]
    lg = sorted({g for b in layout.ranks for g in layout.gpus.get(b, [])})
    world = len(layout.ranks)
    mb_tokens = max(1.0, w.micro_batch_tokens / (1 if w.micro_batch_per_rank else world))
    parts, alt, lnotes = learner_parts(dims, w.learner, world, mb_tokens, mb_tokens, on_gpu,
                                       fused_logits=w.fused_logits)
    learner = Actor("learner", gpus=lg if on_gpu else [], parts=parts, alt=alt, notes=lnotes)
    learner.notes.append(f"{mb_tokens:,.0f} tokens/micro-batch/{'GPU' if on_gpu else 'rank'}")
    actors.append(learner)
    if teachers:
        pay = teacher_payload_bytes(int(w.step_tokens * w.teacher_fanout), dims.hidden, dims.vocab, w.payload)
        other = teacher_payload_bytes(int(w.step_tokens * w.teacher_fanout), dims.hidden, dims.vocab,
                                      "logits" if w.payload == "hidden" else "hidden")
        # the learner holds one micro-batch's payload on the GPU; the step's payload waits in host RAM
        learner.parts["payload"] = pay * mb_tokens / max(w.step_tokens, 1)
        learner.notes.append(f"teacher payload {w.payload}: {_fmt(pay)}/step in RAM ({_fmt(other)} as "
                             f"{'logits' if w.payload == 'hidden' else 'hidden states'})")
        sp.ram_use += pay
    if w.reference_model:
        wb = 2 if w.learner.precision == "bf16" else 4
        shard = world if w.learner.zero_stage == 3 else 1
        actors.append(Actor("reference", gpus=lg[:1] if on_gpu else [], parts={"weights": dims.params * wb / shard},
                            notes=["frozen init model for the k3 KL term"]))
    if w.engine is not None and w.engine.kind == "hf":
        conc = min(w.engine.max_batch, max(1, w.gen_seqs))
        kvb = dims.kv_bytes_per_token * (1 if (on_gpu and w.learner.precision == "bf16") else 2)
        actors.append(Actor("engine", gpus=lg[:1] if on_gpu else [], parts={"kv": kvb * conc * w.seq_len},
                            notes=[f"hf generate on the learner's weights, {conc} seqs x {w.seq_len:,} tokens"]))
    elif w.engine is not None:
        sp.notes.append("rollouts: an engine leased from the run's fleet (its memory is the fleet's)")
    for i, (name, td) in enumerate(teachers):
        fwd = min(mb_tokens, w.teacher_forward_tokens) * td.hidden * 2 * 4
        if on_gpu:
            gp = layout.gpus.get(layout.teacher_bundles[i], [])[:1]
            actors.append(Actor(f"teacher:{name}", gpus=gp, parts={"weights": td.params * 2, "fwd": fwd},
                                alt={"resident_cap": w.teacher_memory_gb * GB},
                                notes=[f"bundle {layout.teacher_bundles[i]}, bf16 forward, returns "
                                       f"{'last hidden states' if w.payload == 'hidden' else 'full logits'}"]))
        else:
            actors.append(Actor(f"teacher:{name}", parts={"weights": td.params * 2, "fwd": fwd},
                                notes=["bf16 forward on CPU"]))
    if teachers:
        resident = max(1, int(w.teacher_memory_gb * GB // max(teachers[0][1].params * 2, 1)))
        sp.notes.append(f"{len(teachers)} teachers; teacher_memory_gb={w.teacher_memory_gb:g} keeps "
                        f"{min(resident, len(teachers))} resident per GPU at once, the others wait in host RAM")
    if w.reward_workers:
        actors.append(_rewards(w.reward_workers))
    return sp


def plan_fleet(recipe: Recipe, dims: Dims) -> StagePlan | None:
    """The run's rollout fleet as a plan entry: one engine actor per bundle, for the whole run."""
    cfg = recipe.fleet
    if cfg is None:
        return None
    G = float(cfg.resources.num_gpus * cfg.engines)
    tp = cfg.tensor_parallel_size
    if cfg.resources.num_gpus and tp > 1 and tp > cfg.resources.num_gpus:   # TP 1 may take a fraction of a GPU
        raise RecipeError(f"fleet.tensor_parallel_size {tp} > fleet.resources.num_gpus {cfg.resources.num_gpus:g} "
                          "per engine")
    if not cfg.resources.num_gpus and tp > 1:
        raise RecipeError(f"fleet.tensor_parallel_size {tp} needs GPUs (fleet.resources.num_gpus is 0)")
    try:
        layout = fleet_layout(cfg)
    except ValueError as e:                       # TP > 1: GPUs per engine other than its tensor-parallel size
        raise RecipeError(str(e)) from None
    sp = StagePlan("fleet", "fleet", G, cfg.resources.num_cpus * cfg.engines, [], "fleet", layout=layout)
    wb = engine_weight_bytes(dims, cfg.fp4, 2)
    budgets = [s.for_mode(m).l_max for s in [recipe.grpo.shaping] for m in recipe.modes] if recipe.grpo else [1024]
    seq = PROMPT_TOKENS + max(budgets)
    kv_seq = dims.kv_bytes_per_token * seq
    for i in range(cfg.engines):
        a = Actor(f"engine{i}", gpus=engine_gpus(layout, i), parts={"weights": wb / tp},
                  notes=[f"vLLM TP={tp}{' MXFP4 weights' if cfg.fp4 else ''}, held for the run"])
        if cfg.resources.num_gpus:
            a.alt.update(reserved=cfg.gpu_memory_utilization, kv_seq=kv_seq / tp, conc=1)
        elif cfg.kv_cache_gb:
            a.parts["kv"] = cfg.kv_cache_gb * 2**30
        sp.actors.append(a)
    return sp


def _rewards(n: int) -> Actor:
    return Actor("rewards", parts={"workers": REWARD_WORKER_GB * GB * max(1, n)},
                 notes=[f"{max(1, n)} verifier processes (CPU)"])


# ---------------------------------------------------------------------------------------------------------------
# fitting


def _fit_teachers(sp: StagePlan, cluster: Cluster) -> None:
    """A teacher too big for one GPU is sharded over as many GPUs of its pool as it needs (tensor parallel)."""
    if not sp.gpus or not cluster.described:
        return
    cap = cluster.gpu_mem_gb * GB * LEARNER_HEADROOM
    for a in sp.actors:
        if a.name.startswith("teacher:") and a.parts["weights"] > cap:
            k = math.ceil(a.parts["weights"] / cap)
            start = a.gpus[0]
            a.gpus = [(start + j) % sp.gpus for j in range(min(k, sp.gpus))]
            a.parts = {k2: v / len(a.gpus) for k2, v in a.parts.items()}
            a.notes.append(f"sharded over {len(a.gpus)} GPUs")


def stage_usage(sp: StagePlan, cluster: Cluster) -> None:
    _fit_teachers(sp, cluster)
    use: dict[int, float] = {}
    ram = sp.ram_use
    teach: dict[int, list[float]] = {}   # teachers per GPU: at most teacher_memory_gb resident, the rest in RAM
    for a in sp.actors:
        if a.gpus and "resident_cap" in a.alt:
            for g in a.gpus:
                teach.setdefault(g, []).append(a.total)
            continue
        if a.gpus:
            per = a.total
            if "reserved" in a.alt and cluster.described:
                per = a.alt["reserved"] * cluster.gpu_mem_gb * GB
                room = per * 0.95 - a.parts["weights"]  # ~5% for CUDA graphs and sampler buffers
                a.alt["kv_room"] = room
                fits = int(max(room, 0) // a.alt["kv_seq"]) if a.alt["kv_seq"] else 0
                a.notes.append(f"KV room {_fmt(max(room, 0))}/GPU = {fits} concurrent seqs"
                               + ("" if fits >= a.alt["conc"] else f" (< {a.alt['conc']}: vLLM queues the rest)"))
            for g in a.gpus:
                use[g] = use.get(g, 0.0) + per
        else:
            ram += a.total
    cap = next((a.alt["resident_cap"] for a in sp.actors if "resident_cap" in a.alt), 0.0)
    for g, sizes in teach.items():
        resident = max(cap, max(sizes))
        on_gpu = min(sum(sizes), resident)
        use[g] = use.get(g, 0.0) + on_gpu
        ram += sum(sizes) - on_gpu
    sp.gpu_use, sp.ram_use = use, ram


def check_fit(plans: list[StagePlan], cluster: Cluster) -> list[str]:
    """Problems (one line each) that keep the cluster from holding the plan; also assigns nodes and waves."""
    problems = []
    if not cluster.described:
        return problems
    for sp in plans:
        where = f"stage {sp.id}"
        if sp.kind == "fleet":                    # its engines may sit on several nodes: one bundle each
            per = max((len(engine_gpus(sp.layout, e)) for e in range(len(sp.layout.engine_bundles))), default=0)
            if per > cluster.gpus:
                problems.append(f"fleet: an engine needs {per} GPUs on one node but a node has {cluster.gpus}")
            elif sp.node is None:
                problems.append(f"fleet: {len(sp.actors)} engines do not fit the cluster's nodes")
        elif sp.gpus > cluster.gpus:
            problems.append(f"{where} needs {sp.gpus} GPUs on one node but a node has {cluster.gpus} "
                            "(a stage is one Ray task: it cannot span nodes)")
            continue
        if sp.cpus > cluster.cpus:
            problems.append(f"{where} needs {sp.cpus:g} CPUs but a node has {cluster.cpus:g}")
        for k, v in sp.custom.items():
            if v > cluster.custom.get(k, 0):
                problems.append(f"{where} needs custom resource {k}={v:g} that no node offers")
        cap = cluster.gpu_mem_gb * GB
        for a in sp.actors:
            if a.alt.get("kv_room", 1) < a.alt.get("kv_seq", 0):
                problems.append(f"{where}: {a.name} weights {_fmt(a.parts['weights'])}/GPU leave no KV cache room "
                                f"in gpu_memory_utilization {a.alt['reserved']:g} x {cluster.gpu_mem_gb:g} GB "
                                f"(one {_fmt(a.alt['kv_seq'])} sequence does not fit)")
        for g, b in sorted(sp.gpu_use.items()):
            if b > cap:
                parts = ", ".join(f"{a.name} {_fmt(_actor_gpu_bytes(a, cluster))}" for a in sp.actors if g in a.gpus)
                problems.append(f"{where}: GPU {g} needs {_fmt(b)} ({parts}) but has {_fmt(cap)}")
                break
        if sp.ram_use > cluster.ram_gb * GB:
            problems.append(f"{where} needs {_fmt(sp.ram_use)} of host RAM but a node has {cluster.ram_gb:g} GB")
    return problems


def _actor_gpu_bytes(a: Actor, cluster: Cluster) -> float:
    if "reserved" in a.alt and cluster.described:
        return a.alt["reserved"] * cluster.gpu_mem_gb * GB
    return a.total


def assign_nodes(plans: list[StagePlan], graph, cluster: Cluster, fleet: StagePlan | None = None) -> None:
    """The fleet's engines first (held for the whole run), first-fit onto nodes; then waves = dependency depth, and
    within a wave stages packed first-fit onto what the fleet left (the rest queue)."""
    held = [[0.0, 0.0] for _ in range(cluster.nodes)]
    if fleet is not None:
        g, c = fleet.layout.rank_resources["num_gpus"] or 0.0, fleet.layout.rank_resources["num_cpus"] or 0.0
        placed = []
        for _ in fleet.actors:
            node = next((i for i in range(cluster.nodes) if held[i][0] + g <= cluster.gpus
                         and held[i][1] + c <= cluster.cpus), None)
            if node is None:
                placed = []
                break
            held[node][0] += g
            held[node][1] += c
            placed.append(node)
        fleet.node = min(placed) if placed else None
    depth = {}
    for s in graph:
        depth[s.id] = 1 + max((depth[d] for d in s.deps), default=-1)
    by_wave: dict[int, list[StagePlan]] = {}
    for sp in plans:
        sp.wave = depth[sp.id]
        by_wave.setdefault(sp.wave, []).append(sp)
    for wave, sps in by_wave.items():
        free = [[cluster.gpus - held[i][0], cluster.cpus - held[i][1]] for i in range(cluster.nodes)]
        for sp in sps:
            for i, (g, c) in enumerate(free):
                if sp.gpus <= g and sp.cpus <= c:
                    sp.node = i
                    free[i] = [g - sp.gpus, c - sp.cpus]
                    break


def build_plan(recipe: Recipe, cluster: Cluster, graph=None) -> tuple[Dims, list[StagePlan], list[str]]:
    from ..graph import build_graph

    graph = graph if graph is not None else build_graph(recipe)
    dims = model_dims(recipe)
    plans = [plan_stage(recipe, s, dims) for s in graph]
    fleet = plan_fleet(recipe, dims)
    for sp in plans:
        stage_usage(sp, cluster)
    if fleet is not None:
        stage_usage(fleet, cluster)
    assign_nodes(plans, graph, cluster, fleet)
    if fleet is not None:
        plans.insert(0, fleet)
    return dims, plans, check_fit(plans, cluster)
