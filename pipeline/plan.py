"""`pipeline plan RECIPE [--cluster ...]`: a dry run that places every actor and estimates its memory.

For each stage of the recipe's graph it prints where the stage goes (node, GPUs), the actors inside it — the
learner (ZeRO-sharded over its GPUs), the rollout engines (tensor parallel, optionally FP4 weights), the teachers
(distillation), a frozen reference model (GRPO with a KL term) and the reward workers — and, per actor, the
memory of weights, KV cache, optimizer states, gradients, activations (with and without gradient checkpointing),
logits and the teacher payload. It exits 2 with one line on stderr when the described cluster cannot hold it.

Everything here is arithmetic on the model's dimensions; nothing is loaded and nothing is downloaded. The
formulas and their assumptions are spelled out in docs/scaling.md ("Memory math").
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .recipe import LearnerConfig, Recipe, RecipeError, _is_local

GB = 1e9
PROMPT_TOKENS = 512          # assumed prompt length for RL / distillation rollouts (completions use the mode budget)
ACT_BYTES_PER_H = 34         # activations per token per layer ~ 34*H bytes in bf16 (Korthikanti et al. 2022,
                             # flash/SDPA attention: no s^2 term); fp32 doubles it
FP4_BYTES = 4.25 / 8         # MXFP4: 4-bit elements + one 8-bit E8M0 scale per 32 values
REWARD_WORKER_GB = 0.3       # one verifier process (math-verify / sandbox zygote child)
LEARNER_HEADROOM = 0.9       # the fraction of a GPU the learner + co-resident actors may plan to use
DISTILL_MICRO_TOKENS = 8192  # distill.loss.MICRO_BATCH_TOKENS
CHUNK = 1024


# ---------------------------------------------------------------------------------------------------------------
# model dimensions


@dataclass
class Dims:
    params: float             # total parameters
    active: float             # parameters used per token (MoE: routed top-k experts)
    hidden: int
    layers: int
    vocab: int
    kv_bytes_per_token: float  # K and V over all layers, bf16
    fp4_params: float         # parameters that MXFP4 targets (MoE experts, else dense MLP projections)
    adam_params: float        # parameters Muon leaves to AdamW (embeddings, head, norms, routers)
    max_context: int | None
    source: str
    moe_act_per_token_layer: float = 0.0  # extra activation bytes per token per MoE layer (k experts' MLPs)

    def describe(self) -> str:
        def n(x):
            return f"{x / 1e9:.3g}B" if x >= 1e9 else f"{x / 1e6:.3g}M"

        act = "" if abs(self.active - self.params) < 1 else f", {n(self.active)} active"
        ctx = f", context {self.max_context:,}" if self.max_context else ""
        return (f"{n(self.params)} params{act}, H={self.hidden:,}, L={self.layers}, V={self.vocab:,}, "
                f"KV {self.kv_bytes_per_token / 1024:.4g} KiB/token{ctx} (from {self.source})")


def dims_from_config(c: dict, source: str) -> Dims:
    """Parameter counts from a transformers config (dense, Qwen-MoE, DeepSeek-MoE and Mixtral field names)."""
    if "hidden_size" not in c and isinstance(c.get("text_config"), dict):
        c = c["text_config"]
    g = c.get
    H, L, V = int(g("hidden_size")), int(g("num_hidden_layers")), int(g("vocab_size"))
    nh = int(g("num_attention_heads") or max(1, H // 128))
    nkv = int(g("num_key_value_heads") or nh)
    hd = int(g("head_dim") or H // nh)
    inter = int(g("intermediate_size") or 4 * H)
    experts = int(g("num_experts") or g("n_routed_experts") or g("num_local_experts") or 0)
    k = int(g("num_experts_per_tok") or 0)
    im = int(g("moe_intermediate_size") or inter)
    shared = int(g("shared_expert_intermediate_size") or 0) or int(g("n_shared_experts") or 0) * im
    if experts:
        dense_layers = int(g("first_k_dense_replace") or 0) or len(g("mlp_only_layers") or [])
    else:
        dense_layers = L
    moe_layers = L - dense_layers
    tied = bool(g("tie_word_embeddings", False))
    emb = V * H * (1 if tied else 2)
    attn = H * nh * hd + 2 * H * nkv * hd + nh * hd * H + 2 * hd
    norms = 2 * H
    dense_mlp, expert = 3 * H * inter, 3 * H * im
    router = H * experts
    common = emb + H + L * (attn + norms) + dense_layers * dense_mlp + moe_layers * (router + 3 * H * shared)
    total = common + moe_layers * experts * expert
    active = common + moe_layers * k * expert
    fp4 = moe_layers * experts * expert if experts else dense_layers * dense_mlp
    return Dims(params=total, active=active, hidden=H, layers=L, vocab=V, kv_bytes_per_token=2 * L * nkv * hd * 2,
                fp4_params=fp4, adam_params=emb + H + L * norms + moe_layers * router,
                max_context=g("max_position_embeddings"), source=source,
                moe_act_per_token_layer=(k * im * 2 * 4 if experts else 0) * moe_layers / max(L, 1))


def dims_from_size(s, source: str) -> Dims:
    p = s.params_b * 1e9
    a = (s.active_params_b or s.params_b) * 1e9
    H, L, V = s.hidden_size, s.num_layers, s.vocab_size
    if s.kv_bytes_per_token:
        kv = s.kv_bytes_per_token
    elif s.num_kv_heads and s.head_dim:
        kv = 2 * L * s.num_kv_heads * s.head_dim * 2
    else:  # assume grouped-query attention with 8x fewer KV heads than H/128 query heads
        kv = 2 * L * H / 8 * 2
    emb = 2 * V * H
    attn = 4 * H * H * L  # upper bound for the non-MLP part per layer
    fp4 = max(0.0, p - emb - attn) if a < p else max(0.0, p - emb - attn)
    return Dims(params=p, active=a, hidden=H, layers=L, vocab=V, kv_bytes_per_token=kv, fp4_params=fp4,
                adam_params=emb + 2 * H * L, max_context=s.max_context, source=source)


def model_dims(recipe: Recipe, path: str | None = None, what: str = "model") -> Dims:
    m = recipe.model
    path = m.path if path is None else path
    if what == "model" and m.size is not None:
        return dims_from_size(m.size, "model.size")
    if not path:
        return dims_from_config(m.tiny.model_dump(), "model.tiny")
    cfg = Path(path).expanduser() / "config.json"
    if _is_local(path) and cfg.exists():
        return dims_from_config(json.loads(cfg.read_text()), f"{path}/config.json")
    if what != "model" and m.size is not None:  # a hub-id teacher: assume the student's size
        return dims_from_size(m.size, "model.size (teacher assumed student-sized)")
    raise RecipeError(f"{what} {path!r} is not a local folder with config.json: give its dimensions in model.size "
                      "(params_b, hidden_size, num_layers, vocab_size, ...) for `pipeline plan`")


# ---------------------------------------------------------------------------------------------------------------
# the cluster


@dataclass
class Cluster:
    nodes: int
    gpus: int                  # per node
    gpu_mem_gb: float
    cpus: float                # per node
    ram_gb: float              # per node
    custom: dict = field(default_factory=dict)   # per node
    described: bool = True
    source: str = "--cluster"

    def describe(self) -> str:
        g = f"{self.gpus} GPU x {self.gpu_mem_gb:g} GB, " if self.gpus else "no GPU, "
        extra = "".join(f", {k}={v:g}" for k, v in self.custom.items())
        return f"{self.nodes} node(s) x [{g}{self.cpus:g} CPU, {self.ram_gb:g} GB RAM{extra}] ({self.source})"


def parse_cluster(text: str) -> Cluster:
    vals: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, v = part.partition("=")
        try:
            if not eq:
                raise ValueError
            vals[key.strip()] = float(v)
        except ValueError:
            raise RecipeError(f"--cluster: expected KEY=NUMBER items, got {part!r} "
                              "(keys: nodes, gpus, gpu_mem_gb, cpus, ram_gb, or a custom resource)") from None
    known = {"nodes", "gpus", "gpu_mem_gb", "cpus", "ram_gb"}
    gpus = int(vals.get("gpus", 0))
    if gpus and "gpu_mem_gb" not in vals:
        raise RecipeError("--cluster: gpus given without gpu_mem_gb (memory per GPU, e.g. gpu_mem_gb=141)")
    return Cluster(nodes=max(1, int(vals.get("nodes", 1))), gpus=gpus, gpu_mem_gb=vals.get("gpu_mem_gb", 0.0),
                   cpus=vals.get("cpus", 8.0 * max(gpus, 1)), ram_gb=vals.get("ram_gb", 16.0 * max(gpus * 8, 16)),
                   custom={k: v for k, v in vals.items() if k not in known})


def local_machine(recipe: Recipe) -> Cluster:
    ram = 0.0
    try:
        with open("/proc/meminfo") as f:
            ram = int(f.readline().split()[1]) * 1024 / GB
    except OSError:
        pass
    import glob

    gpus = recipe.ray.num_gpus if recipe.ray.num_gpus is not None else len(glob.glob("/dev/nvidia[0-9]*"))
    return Cluster(nodes=1, gpus=gpus, gpu_mem_gb=80.0 if gpus else 0.0,
                   cpus=float(recipe.ray.num_cpus or os.cpu_count() or 1), ram_gb=ram, source="this machine")


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
    gpus: int
    cpus: float
    actors: list[Actor]
    placement: str
    node: int | None = None
    wave: int = 0
    gpu_use: dict = field(default_factory=dict)   # gpu index -> bytes
    ram_use: float = 0.0
    custom: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _seq_budget(recipe: Recipe, cfg, mode: str | None) -> int:
    if mode and recipe.grpo is not None:
        return recipe.grpo.shaping_config().for_mode(mode).l_max
    return 1024


def _split_gpus(total: int, placement, teachers: int) -> tuple[list[int], list[int], list[int]]:
    """(learner, engine, teacher) GPU indices of a stage."""
    allg = list(range(total))
    if total == 0 or placement.strategy == "colocate":
        return allg, allg, allg
    ge = placement.engine_gpus if placement.engine_gpus is not None else max(1, total // 2)
    gt = placement.teacher_gpus if placement.teacher_gpus is not None else (max(1, total // 4) if teachers else 0)
    if ge + gt >= total:
        raise RecipeError(f"placement split: engine_gpus {ge} + teacher_gpus {gt} leave no GPU for the learner "
                          f"(the stage has {total})")
    learner = allg[: total - ge - gt]
    return learner, allg[len(learner): len(learner) + ge], allg[len(learner) + ge:]


def plan_stage(recipe: Recipe, spec, dims: Dims) -> StagePlan:
    from .graph import distill_teachers

    res = spec.resources
    G = int(math.ceil(res.num_gpus))
    on_gpu = G > 0
    actors: list[Actor] = []
    notes: list[str] = []
    cfg = spec.config
    placement = getattr(cfg, "placement", None)
    sp = StagePlan(spec.id, spec.kind, G, res.num_cpus, actors, placement.strategy if placement else "-",
                   custom=dict(res.custom))

    if spec.kind == "bootstrap":
        wb = 4 if recipe.model.dtype == "float32" else 2
        actors.append(Actor("loader", parts={"weights": dims.params * wb},
                            notes=["builds/loads the model once, writes final/ (RAM)"]))
        sp.gpus = 0
        return sp
    if spec.kind == "eval":
        eng = Actor("engine", parts={"weights": engine_weight_bytes(dims, False, 2 if on_gpu else 4)},
                    notes=["one model at a time (hf generate)"])
        actors.append(eng)
        actors.append(Actor("rewards", parts={"workers": REWARD_WORKER_GB * GB * max(1, res.num_cpus - 1)},
                            notes=[f"{max(1, int(res.num_cpus) - 1)} verifier processes (CPU)"]))
        if on_gpu:
            eng.gpus = [0]
        return sp

    learner_cfg = recipe.learner_for(cfg.learner)
    teachers: list[tuple[str, Dims]] = []
    if spec.kind == "distill":
        seen = {}
        for refs in distill_teachers(recipe).values():
            for t in refs:
                key = t.stage or t.path
                if key not in seen:
                    seen[key] = dims if t.stage else model_dims(recipe, t.path, what="teacher")
        teachers = list(seen.items())
    lg, eg, tg = _split_gpus(G, placement, len(teachers)) if placement else (list(range(G)),) * 3
    world = max(1, len(lg))

    # tokens the learner sees per micro-batch (per GPU) and per step
    if spec.kind == "sft":
        seqs, seq_len = cfg.batch_size, cfg.max_len
        mb_tokens = seqs * seq_len / world
        step_tokens = seqs * seq_len
        gen_seqs = 0
    elif spec.kind == "grpo":
        seq_len = PROMPT_TOKENS + _seq_budget(recipe, cfg, spec.mode)
        gen_seqs = cfg.prompts_per_step * cfg.group_size
        mb_tokens = max(1, gen_seqs // cfg.minibatches) * seq_len / world
        step_tokens = gen_seqs * seq_len
    else:  # distill
        from distill.stage import max_tokens_per_mode

        budgets = max_tokens_per_mode(recipe, cfg)
        seq_len = PROMPT_TOKENS + max(budgets.values())
        gen_seqs = cfg.prompts_per_step * cfg.samples_per_prompt
        mb_tokens = max(DISTILL_MICRO_TOKENS, seq_len)
        step_tokens = gen_seqs * seq_len
    mb_tokens = max(1.0, mb_tokens)

    parts, alt, lnotes = learner_parts(dims, learner_cfg, world, mb_tokens, mb_tokens, on_gpu,
                                       fused_logits=spec.kind == "distill")
    learner = Actor("learner", gpus=lg if on_gpu else [], parts=parts, alt=alt, notes=lnotes)
    learner.notes.append(f"{mb_tokens:,.0f} tokens/micro-batch/{'GPU' if on_gpu else 'process'}")
    actors.append(learner)

    if spec.kind == "distill":
        from distill.kl import teacher_payload_bytes

        per_key = [len(v) for v in distill_teachers(recipe).values()] or [1]
        fan = sum(per_key) / len(per_key)
        pay = teacher_payload_bytes(int(step_tokens * fan), dims.hidden, dims.vocab, cfg.payload)
        other = teacher_payload_bytes(int(step_tokens * fan), dims.hidden, dims.vocab,
                                      "logits" if cfg.payload == "hidden" else "hidden")
        # the learner holds one micro-batch's payload on the GPU; the step's payload waits in host RAM
        mb_pay = pay * mb_tokens / max(step_tokens, 1)
        learner.parts["payload"] = mb_pay
        learner.notes.append(f"teacher payload {cfg.payload}: {_fmt(pay)}/step in RAM ({_fmt(other)} as "
                             f"{'logits' if cfg.payload == 'hidden' else 'hidden states'})")
        sp.ram_use += pay

    if spec.kind == "grpo" and cfg.kl_coef > 0:
        wb = 2 if learner_cfg.precision == "bf16" else 4
        shard = world if learner_cfg.zero_stage == 3 else 1
        actors.append(Actor("reference", gpus=lg if on_gpu else [], parts={"weights": dims.params * wb / shard},
                            notes=["frozen init model for the k3 KL term"]))

    # rollout engines
    eng_cfg = getattr(cfg, "engine", None)
    tp = eng_cfg.tensor_parallel_size if eng_cfg else 1
    if eng_cfg is None:  # SFT: no rollouts
        pass
    elif eng_cfg.kind == "vllm":
        if on_gpu and tp > len(eg):
            raise RecipeError(f"{spec.id}: engine.tensor_parallel_size {tp} > the {len(eg)} GPU(s) given to engines")
        if not on_gpu and tp > 1:
            raise RecipeError(f"{spec.id}: engine.tensor_parallel_size {tp} needs GPUs (resources.num_gpus is 0)")
        n_eng = max(1, len(eg) // tp) if on_gpu else 1
        w = engine_weight_bytes(dims, eng_cfg.fp4, 2)
        conc = min(eng_cfg.max_batch, max(1, math.ceil(gen_seqs / n_eng)))
        kv_seq = dims.kv_bytes_per_token * seq_len
        for i in range(n_eng):
            gpus = eg[i * tp:(i + 1) * tp] if on_gpu else []
            a = Actor(f"engine{i}", gpus=gpus, parts={"weights": w / tp, "kv": kv_seq * conc / tp},
                      notes=[f"vLLM TP={tp}{' MXFP4 weights' if eng_cfg.fp4 else ' bf16'}, "
                             f"{conc} seqs x {seq_len:,} tokens"])
            if on_gpu:
                # vLLM claims gpu_memory_utilization of each GPU up front (weights + KV + graphs) and keeps it:
                # the KV it holds is what is left of that after the weights; fewer concurrent sequences if short
                a.alt.update(reserved=eng_cfg.gpu_memory_utilization, kv_seq=kv_seq / tp, conc=conc)
            actors.append(a)
    else:  # hf engine: generates with the learner's own weights in the stage process
        conc = min(eng_cfg.max_batch, max(1, gen_seqs))
        kvb = dims.kv_bytes_per_token * (1 if (on_gpu and learner_cfg.precision == "bf16") else 2)
        actors.append(Actor("engine", gpus=lg[:1] if on_gpu else [], parts={"kv": kvb * conc * seq_len},
                            notes=[f"hf generate on the learner's weights, {conc} seqs x {seq_len:,} tokens"]))

    # teachers
    for i, (name, td) in enumerate(teachers):
        w = td.params * 2
        fwd = min(mb_tokens, DISTILL_MICRO_TOKENS) * td.hidden * 2 * 4
        if on_gpu:
            pool = tg if tg else lg  # spread round-robin; _fit_teachers shards one too big for a GPU
            a = Actor(f"teacher:{name}", gpus=[pool[i % len(pool)]], parts={"weights": w, "fwd": fwd},
                      alt={"resident_cap": cfg.teacher_memory_gb * GB},
                      notes=["bf16 forward, returns last hidden states" if cfg.payload == "hidden"
                             else "bf16 forward, returns full logits"])
        else:
            a = Actor(f"teacher:{name}", parts={"weights": w, "fwd": fwd}, notes=["bf16 forward on CPU"])
        actors.append(a)
    if teachers:
        resident = max(1, int(cfg.teacher_memory_gb * GB // max(teachers[0][1].params * 2, 1)))
        notes.append(f"{len(teachers)} teachers; teacher_memory_gb={cfg.teacher_memory_gb:g} keeps "
                     f"{min(resident, len(teachers))} resident per GPU at once, the others wait in host RAM")

    if spec.kind == "grpo":
        nw = max(1, int(res.num_cpus) - 1)
        actors.append(Actor("rewards", parts={"workers": REWARD_WORKER_GB * GB * nw},
                            notes=[f"{nw} verifier processes (CPU)"]))
    sp.notes = notes
    return sp


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
        if sp.gpus > cluster.gpus:
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


def assign_nodes(plans: list[StagePlan], graph, cluster: Cluster) -> None:
    """Waves = dependency depth; within a wave, stages are packed first-fit onto nodes (the rest queue)."""
    depth = {}
    for s in graph:
        depth[s.id] = 1 + max((depth[d] for d in s.deps), default=-1)
    by_wave: dict[int, list[StagePlan]] = {}
    for sp in plans:
        sp.wave = depth[sp.id]
        by_wave.setdefault(sp.wave, []).append(sp)
    for wave, sps in by_wave.items():
        free = [[cluster.gpus, cluster.cpus] for _ in range(cluster.nodes)]
        for sp in sps:
            for i, (g, c) in enumerate(free):
                if sp.gpus <= g and sp.cpus <= c:
                    sp.node = i
                    free[i] = [g - sp.gpus, c - sp.cpus]
                    break


# ---------------------------------------------------------------------------------------------------------------
# the command


def build_plan(recipe: Recipe, cluster: Cluster) -> tuple[Dims, list[StagePlan], list[str]]:
    from .graph import build_graph

    graph = build_graph(recipe)
    dims = model_dims(recipe)
    plans = [plan_stage(recipe, s, dims) for s in graph]
    for sp in plans:
        stage_usage(sp, cluster)
    assign_nodes(plans, graph, cluster)
    return dims, plans, check_fit(plans, cluster)


def render(recipe: Recipe, source: str, cluster: Cluster, dims: Dims, plans: list[StagePlan]) -> list[str]:
    out = [f"plan: {source} ({recipe.name}) on {cluster.describe() if cluster.described else 'an undescribed cluster'}",
           f"model: {recipe.model.path or 'embedded tiny Qwen3-MoE'} -- {dims.describe()}"]
    if not cluster.described:
        out.append(f"note: the recipe joins ray.address={recipe.ray.address}; pass --cluster "
                   "\"nodes=..,gpus=..,gpu_mem_gb=..,cpus=..,ram_gb=..\" to check that it fits")
    for sp in plans:
        node = f"node {sp.node}" if sp.node is not None else ("queued" if cluster.described else "node ?")
        gp = f"{sp.gpus} GPU, " if sp.gpus else ""
        pl = f"; placement {sp.placement}" if sp.placement != "-" else ""
        peak = max(sp.gpu_use.values(), default=0.0)
        peak_s = f"; peak {_fmt(peak)}/GPU" + (f" of {cluster.gpu_mem_gb:g} GB" if cluster.described else "") \
            if sp.gpus else ""
        out.append(f"stage {sp.id} [{sp.kind}; {gp}{sp.cpus:g} CPU{pl}] -> {node}, wave {sp.wave}{peak_s}; "
                   f"host RAM {_fmt(sp.ram_use)}")
        for a in sp.actors:
            where = _gpus_str(a.gpus) if a.gpus else "CPU/RAM"
            parts = ", ".join(f"{k} {_fmt(v)}" for k, v in a.parts.items() if v)
            alt = ""
            if "acts_ckpt" in a.alt:
                alt = f" [acts with checkpointing {_fmt(a.alt['acts_ckpt'])}]"
            if "reserved" in a.alt:
                res = (f" [vLLM reserves {a.alt['reserved']:g} x GPU"
                       + (f" = {_fmt(a.alt['reserved'] * cluster.gpu_mem_gb * GB)}]" if cluster.described else "]"))
                alt += res
            per = "/GPU" if a.gpus else ""
            out.append(f"    {a.name:22s} {where:10s} {parts} = {_fmt(a.total)}{per}{alt}; {'; '.join(a.notes)}")
        for n in sp.notes:
            out.append(f"    note: {n}")
    return out


def _gpus_str(g: list[int]) -> str:
    if not g:
        return ""
    if g == list(range(g[0], g[-1] + 1)) and len(g) > 1:
        return f"GPU {g[0]}-{g[-1]}"
    return "GPU " + ",".join(map(str, g))


def main_plan(recipe: Recipe, source: str, cluster_text: str | None, echo=print) -> tuple[int, str | None]:
    """Returns (exit code, the one error line or None)."""
    from .recipe import cross_check

    if cluster_text:
        cluster = parse_cluster(cluster_text)
    elif recipe.ray.address:
        cluster = Cluster(nodes=1, gpus=0, gpu_mem_gb=0, cpus=0, ram_gb=0, described=False)
    else:
        cluster = local_machine(recipe)
    if cluster.described:
        cross_check(recipe, source, cluster={"CPU": cluster.cpus, "GPU": cluster.gpus, **cluster.custom})
    else:
        cross_check(recipe, source, cluster={})
    dims, plans, problems = build_plan(recipe, cluster)
    for line in render(recipe, source, cluster, dims, plans):
        echo(line)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return 2, f"does not fit: {problems[0]}{more}"
    echo("fits" if cluster.described else "fit not checked (no --cluster)")
    return 0, None
