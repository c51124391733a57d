"""Teachers as Ray actors, kept resident under a memory budget.

Each distinct teacher checkpoint gets one actor (:class:`TeacherWorker`) that loads the model lazily on first use,
runs the student's sequences through it and returns, for the loss positions only, its **last hidden states** in
bf16 (``payload="hidden"``) -- or full fp32 logits (``payload="logits"``, for comparison). The learner fetches each
teacher's output head once (:meth:`TeacherPool.head`) and recomputes teacher logits chunk by chunk inside the loss
(``distill.kl``).

:class:`TeacherPool` bounds the resident set: before a teacher is started, least-recently-used actors are killed
(which frees the whole process, not just the weights) until the estimate of the resident memory -- each actor's
measured peak RSS, or for a new one its weight bytes plus :data:`ACTOR_OVERHEAD_BYTES` -- fits
``teacher_memory_gb``. A teacher larger than the whole budget still runs, alone.

:func:`check_teachers` validates every teacher folder (exists, has a config and weights, same vocabulary as the
student) before the stage does any work; each problem is one line naming ``distill.teachers.<key>``.
"""
from __future__ import annotations

import json
import resource
import time
from collections import OrderedDict
from pathlib import Path

import torch

from core.where import device, where

ACTOR_OVERHEAD_BYTES = int(0.45 * 2**30)   # a Ray worker with torch + transformers imported (measured ~0.4 GiB)
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt")


# ------------------------------------------------------------------------------------------------ validation
def _vocab_map(folder: Path) -> dict | None:
    f = folder / "tokenizer.json"
    if not f.exists():
        return None
    tok = json.loads(f.read_text())
    vocab = dict(tok.get("model", {}).get("vocab", {}) or {})
    vocab.update({t["content"]: t["id"] for t in tok.get("added_tokens", [])})
    return vocab


def _model_vocab(folder: Path) -> int | None:
    cfg = json.loads((folder / "config.json").read_text())
    return cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size")


def weight_bytes(folder: str | Path) -> int:
    folder = Path(folder)
    return sum(p.stat().st_size for g in WEIGHT_GLOBS for p in folder.glob(g))


def check_teachers(table: dict, student_folder: str | Path) -> None:
    """Raise ValueError (one line) for a teacher folder that is missing, not a model, or has another vocabulary."""
    student = Path(student_folder)
    s_vocab, s_map = _model_vocab(student), _vocab_map(student)
    for key, routes in table.items():
        for t, _ in routes:
            where = f"distill.teachers.{key}: teacher {t.name}"
            folder = Path(t.folder)
            if not folder.is_dir():
                raise ValueError(f"{where}: no such checkpoint folder {t.folder}")
            if not (folder / "config.json").exists():
                raise ValueError(f"{where}: {t.folder} has no config.json (not a Hugging Face model folder)")
            if not weight_bytes(folder):
                raise ValueError(f"{where}: {t.folder} holds no weights (*.safetensors / *.bin)")
            t_vocab = _model_vocab(folder)
            if t_vocab != s_vocab:
                raise ValueError(f"{where}: vocabulary mismatch: teacher vocab_size {t_vocab}, "
                                 f"student ({student}) {s_vocab}")
            t_map = _vocab_map(folder)
            if s_map is not None and t_map is not None and t_map != s_map:
                diff = len(set(t_map.items()) ^ set(s_map.items()))
                raise ValueError(f"{where}: vocabulary mismatch: the teacher's tokenizer differs from the "
                                 f"student's ({len(t_map)} vs {len(s_map)} tokens, {diff} entries differ)")


# ----------------------------------------------------------------------------------------------------- actor
@torch.no_grad()
def mxfp4_dequantized(model):
    """``model`` with its MXFP4 targets replaced, in place, by their MXFP4-dequantized values: the weights a learner
    with ``qat: mxfp4`` computes with (``rollout.fp4.enable_qat``: the same targets, ``fake_quant_mxfp4``) and the
    fleet serves (``quantized_state_dict``). Returns the model."""
    from rollout.fp4 import quantized_state_dict

    for name, w in quantized_state_dict(model, targets_only=True).items():
        model.get_parameter(name).copy_(w)
    return model


class TeacherWorker:
    """One teacher model in its own process. Plain class; :class:`TeacherPool` wraps it with ``ray.remote``."""

    def __init__(self, folder: str, threads: int = 1, dtype: str = "float32", qat: str = "none"):
        """``qat``: ``"mxfp4"`` serves the MXFP4-dequantized weights its stage trained (and the fleet serves)."""
        self.folder, self.threads, self.qat = folder, threads, qat
        self.device = device()                  # the GPU Ray gave this actor, if any (ray.get_gpu_ids)
        self.dtype = torch.bfloat16 if self.device == "cuda" else getattr(torch, dtype)
        self.model = None

    def where(self) -> dict:
        """Where this teacher runs (core.where: node, pid, the GPU ids Ray gave it, placement group)."""
        return where()

    def load(self) -> int:
        """Load the model if not yet loaded; returns this process's peak RSS in bytes."""
        if self.model is None:
            from transformers import AutoModelForCausalLM

            torch.set_num_threads(max(1, self.threads))
            if self.qat == "mxfp4":           # quantize the stored (fp32) weights, then cast: MXFP4 values fit bf16
                model = mxfp4_dequantized(AutoModelForCausalLM.from_pretrained(self.folder, dtype=torch.float32))
                self.model = model.to(self.dtype).to(self.device).eval()
            else:
                self.model = AutoModelForCausalLM.from_pretrained(self.folder, dtype=self.dtype).to(self.device).eval()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def head(self) -> torch.Tensor:
        self.load()
        return self.model.get_output_embeddings().weight.detach().float().cpu().clone()

    @torch.no_grad()
    def forward(self, seqs: list[list[int]], positions: list[list[int]], payload: str = "hidden",
                batch: int = 16) -> list[torch.Tensor]:
        """Per sequence, the last hidden states ``[len(positions), H]`` bf16 (or logits ``[.., V]`` fp32) at the
        given positions, computed on the unpadded sequence (right padding, so positions are unchanged)."""
        self.load()
        base = self.model.base_model
        out: list[torch.Tensor] = []
        for s in range(0, len(seqs), batch):
            chunk, pos = seqs[s:s + batch], positions[s:s + batch]
            T = max(len(x) for x in chunk)
            ids = torch.zeros(len(chunk), T, dtype=torch.long, device=self.device)
            attn = torch.zeros(len(chunk), T, dtype=torch.long, device=self.device)
            for i, x in enumerate(chunk):
                ids[i, :len(x)] = torch.tensor(x)
                attn[i, :len(x)] = 1
            h = base(input_ids=ids, attention_mask=attn).last_hidden_state
            for i, p in enumerate(pos):
                rows = h[i, torch.tensor(p, dtype=torch.long, device=self.device)]
                if payload == "logits":
                    out.append(self.model.get_output_embeddings()(rows).float().cpu())
                else:
                    out.append(rows.to(torch.bfloat16).cpu())
        return out


# ------------------------------------------------------------------------------------------------------ pool
class TeacherPool:
    """Lazily started teacher actors, least-recently-used evicted to stay within ``budget_gb``."""

    def __init__(self, teachers: dict, budget_gb: float, threads: int = 1, num_cpus: float = 0,
                 payload: str = "hidden", dtype: str = "float32", placement: dict | None = None,
                 qat: dict | None = None):
        """``placement``: ``{"pg", "bundles", "num_gpus"}`` -- the stage's placement group, the bundle of each
        teacher (in the order of ``teachers``) and the GPU share each teacher actor asks of it. ``qat``: teacher
        name -> ``"mxfp4"`` for the teachers served MXFP4-dequantized (``DistillStage.teacher_qat``)."""
        import ray

        self.ray = ray
        self.teachers = teachers                      # name -> routing.Teacher
        self.budget = int(budget_gb * 2**30)
        self.threads, self.payload, self.dtype = threads, payload, dtype
        self.remote_cls = ray.remote(num_cpus=num_cpus, max_restarts=0)(TeacherWorker)
        self.placement = placement
        self.qat = dict(qat or {})
        self.order = {name: i for i, name in enumerate(teachers)}
        self.actors: OrderedDict[str, object] = OrderedDict()   # LRU order: oldest first
        self.rss: dict[str, int] = {}
        self.heads: dict[str, torch.Tensor] = {}
        self.loads = self.evictions = 0
        self.load_s = 0.0

    def _estimate(self, name: str) -> int:
        return weight_bytes(self.teachers[name].folder) + ACTOR_OVERHEAD_BYTES

    def resident_bytes(self) -> int:
        return sum(self.rss.values())

    def _actor(self, name: str):
        if name not in self.actors:
            self._start([name])
        self.actors.move_to_end(name)
        return self.actors[name]

    def _start(self, names: list[str]) -> None:
        """Start the actors for ``names`` (none resident) together: evict least-recently-used actors outside
        ``names`` until all fit the budget, then load them in parallel (process start-up overlaps)."""
        need = sum(self._estimate(n) for n in names)
        while self.actors and self.resident_bytes() + need > self.budget:
            old, actor = self.actors.popitem(last=False)
            self.ray.kill(actor)
            self.rss.pop(old, None)
            self.evictions += 1
        t = time.perf_counter()
        started = {}
        for n in names:
            opts = self._options(n)
            cls = self.remote_cls.options(**opts) if opts else self.remote_cls
            qat = {"qat": self.qat[n]} if self.qat.get(n, "none") != "none" else {}
            started[n] = cls.remote(self.teachers[n].folder, self.threads, self.dtype, **qat)
        for n, rss in zip(started, self.ray.get([a.load.remote() for a in started.values()])):
            self.rss[n] = rss
            self.actors[n] = started[n]
        self.load_s += time.perf_counter() - t
        self.loads += len(names)

    def _options(self, name: str) -> dict:
        """Ray options of a teacher actor: its bundle of the stage's placement group, its GPU share."""
        if not self.placement:
            return {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundles = self.placement["bundles"]
        b = bundles[self.order[name] % len(bundles)] if bundles else 0
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.placement["pg"],
                                                                        placement_group_bundle_index=b),
                "num_gpus": self.placement.get("num_gpus") or 0}

    def _batch_to_start(self, names: list[str]) -> list[str]:
        """The longest prefix of the missing ``names`` whose estimated memory fits the budget next to the
        resident teachers among ``names`` (at least one: a teacher larger than the budget runs alone)."""
        kept = sum(self.rss.get(n, 0) for n in names if n in self.actors)
        out, total = [], kept
        for n in names:
            if n in self.actors:
                continue
            total += self._estimate(n)
            if out and total > self.budget:
                break
            out.append(n)
        return out

    def head(self, name: str) -> torch.Tensor:
        """The teacher's output head ``[V, H]``, fetched once and kept on the learner (never evicted)."""
        if name not in self.heads:
            self.heads[name] = self.ray.get(self._actor(name).head.remote())
        return self.heads[name]

    def run(self, requests: dict[str, tuple[list, list]]) -> dict[str, list[torch.Tensor]]:
        """``{teacher: (seqs, positions)}`` -> ``{teacher: [payload per sequence]}``. Teachers already resident
        go first (in parallel); the others are started in batches that fit the budget, evicting as needed after
        earlier results are in."""
        order = sorted(requests, key=lambda n: n not in self.actors)
        pending, out = {}, {}
        for name in order:
            if name not in self.actors:
                if pending:                                   # about to start (and maybe evict): settle first
                    out.update(zip(pending, self.ray.get(list(pending.values()))))
                    pending = {}
                self._start(self._batch_to_start([n for n in order if n not in out]))
            self.head(name)
            seqs, pos = requests[name]
            pending[name] = self._actor(name).forward.remote(seqs, pos, self.payload)
        out.update(zip(pending, self.ray.get(list(pending.values()))))
        return out

    def close(self) -> None:
        for actor in self.actors.values():
            self.ray.kill(actor)
        self.actors.clear()
        self.rss.clear()
