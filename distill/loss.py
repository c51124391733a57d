"""The distill loss: Σ_teachers w · KL(student ‖ teacher) summed over completion tokens, full vocabulary.

``micro_batches`` packs trajectories (right-padded) into ``DistillBatch`` records holding, per teacher, the rows of
the flattened loss positions it grades, the teacher's payload for those rows (last hidden states, or logits) and
each row's weight. ``make_loss_fn`` returns a ``Learner.step`` loss function: one student forward through the *base*
model (no ``[T, V]`` logits), the last hidden states at the loss positions, then the chunked full-vocabulary reverse
KL against each teacher (``distill.kl``), with the student's own head weight so gradients reach it too. The
micro-batch ``weight`` is its token count, so ``Learner.step`` minimises the mean over tokens.

Shapes: ``B`` trajectories, ``L`` padded length, ``N`` loss positions of the micro-batch, ``N_t`` those a teacher
grades, ``H`` hidden size, ``V`` vocabulary.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from .config import MICRO_BATCH_TOKENS
from .kl import fused_reverse_kl_loss, reverse_kl_per_token, reverse_kl_per_token_from_teacher_logits


@dataclass
class TeacherRows:
    rows_Nt: torch.Tensor             # indices into the micro-batch's N loss positions
    payload_Nt_X: torch.Tensor        # last hidden states [N_t, H_t] (bf16) or logits [N_t, V] (fp32)
    w_Nt: torch.Tensor                # the teacher's weight for each row


@dataclass
class DistillBatch:
    input_ids_B_L: torch.Tensor
    attention_mask_B_L: torch.Tensor
    flat_positions_N: torch.Tensor    # b * L + p for each loss position p of trajectory b
    teachers: dict[str, TeacherRows]
    weight: float                     # N: Learner.step divides the summed loss by the total over micro-batches


def micro_batches(trajs, routes_of, payloads: dict[str, list], pad_id: int,
                  max_tokens: int = MICRO_BATCH_TOKENS, device=None, ranks: int = 1) -> list[DistillBatch]:
    """``routes_of(traj) -> [(teacher, weight)]``; ``payloads[name]`` lists that teacher's tensors in the order of
    the trajectories it grades. Returns micro-batches of at most ``max_tokens`` loss positions (whole trajectories),
    on ``device``; with ``ranks`` learner ranks, at most a ``ranks``-th of the step's tokens each (at least one
    micro-batch per rank). They are one optimizer step's global batch: each weighs its token count, and
    ``Learner.step`` divides the step's KL sum by the total over all of them, whatever the number of ranks."""
    max_tokens = min(max_tokens, -(-sum(t.n_tokens for t in trajs) // max(ranks, 1)))
    cursor = defaultdict(int)
    groups, cur, n = [], [], 0
    for t in trajs:
        if cur and n + t.n_tokens > max_tokens:
            groups.append(cur)
            cur, n = [], 0
        routes = []
        for teacher, w in routes_of(t):
            routes.append((teacher.name, w, payloads[teacher.name][cursor[teacher.name]]))
            cursor[teacher.name] += 1
        cur.append((t, routes))
        n += t.n_tokens
    if cur:
        groups.append(cur)
    return [_pack(g, pad_id, device) for g in groups]


def _pack(group, pad_id: int, device) -> DistillBatch:
    L = max(len(t.ids) for t, _ in group)
    ids = torch.full((len(group), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(group), L), dtype=torch.long)
    flat, teachers = [], defaultdict(lambda: {"rows": [], "payload": [], "w": []})
    for b, (t, routes) in enumerate(group):
        ids[b, :len(t.ids)] = torch.tensor(t.ids)
        attn[b, :len(t.ids)] = 1
        rows = list(range(len(flat), len(flat) + t.n_tokens))
        flat += [b * L + p for p in t.positions]
        for name, w, payload in routes:
            e = teachers[name]
            e["rows"] += rows
            e["payload"].append(payload)
            e["w"] += [w] * t.n_tokens
    dev = device if device is not None else "cpu"
    return DistillBatch(
        ids.to(dev), attn.to(dev), torch.tensor(flat, dtype=torch.long, device=dev),
        {k: TeacherRows(torch.tensor(v["rows"], dtype=torch.long, device=dev), torch.cat(v["payload"]).to(dev),
                        torch.tensor(v["w"], device=dev)) for k, v in teachers.items()},
        weight=float(len(flat)))


def student_hidden(model, mb: DistillBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden states at the loss positions ``[N, H]``, the output head weight ``[V, H]``).

    The forward goes through ``model`` itself, the learner's DDP / DeepSpeed wrapper (a forward of the inner model
    alone would leave DDP's gradient all-reduce unarmed: each rank would step on its own share), with logits for
    one position per row only; a hook on the base model takes its last hidden states."""
    m = getattr(model, "module", model)
    got = []
    hook = m.base_model.register_forward_hook(lambda mod, args, out: got.append(out.last_hidden_state))
    try:
        model(input_ids=mb.input_ids_B_L, attention_mask=mb.attention_mask_B_L, logits_to_keep=1)
    finally:
        hook.remove()
    h_B_L_H = got[-1]
    head_V_H = student_head(m)
    h_N_H = h_B_L_H.reshape(-1, h_B_L_H.shape[-1]).index_select(0, mb.flat_positions_N)
    return h_N_H.to(head_V_H.dtype), head_V_H


def student_head(m) -> torch.Tensor:
    """The student's output head weight ``[V, H]``, in the autograd graph. Under DeepSpeed ZeRO-3 a parameter outside
    its module's forward is a 0-element placeholder (``ds_shape`` holds its shape): the head module then runs on the
    identity ``[H, H]``, so ZeRO gathers the weight for that forward and again for its backward (and partitions the
    gradient the fused loss computes); ``I · Wᵀ`` is ``Wᵀ`` exactly (every product is by 1 or 0)."""
    head = m.get_output_embeddings()
    w = head.weight
    if not hasattr(w, "ds_shape"):
        return w
    if getattr(head, "bias", None) is not None:
        raise ValueError("distill under ZeRO-3: the student's output head has a bias; only bias-free heads are "
                         "supported")
    eye_H_H = torch.eye(w.ds_shape[-1], dtype=w.dtype, device=w.device)
    return head(eye_H_H).t()


def make_loss_fn(heads: dict[str, torch.Tensor], payload: str, chunk_size: int, temperature: float,
                 fused: bool = True):
    """A ``Learner.step`` loss function. Per teacher it reports ``kl_w.<name>`` and ``n_w.<name>`` -- the micro-batch's
    KL sum and token count, divided by its weight -- which ``Learner.step`` turns into Σ/W over the step (on every
    rank alike), so ``kl_means`` gives each teacher's mean KL per token.

    ``fused`` (default): ``fused_reverse_kl_loss`` -- gradients computed during the forward, 4 head matmuls per
    chunk; otherwise ``reverse_kl_per_token`` (its backward recomputes the chunk logits: 6)."""

    def loss_fn(model, mb: DistillBatch):
        h_N_H, head_V_H = student_hidden(model, mb)
        total = h_N_H.new_zeros(())
        stats = {}
        for name, t in mb.teachers.items():
            rows = h_N_H.index_select(0, t.rows_Nt)
            w = t.w_Nt.to(h_N_H.dtype)
            if fused and bool((w == w[0]).all()):   # one weight per teacher: the fused scalar loss, scaled
                kw = dict(teacher_logits=t.payload_Nt_X) if payload == "logits" else dict(
                    teacher_hidden=t.payload_Nt_X, teacher_head=heads[name])
                kl_sum = fused_reverse_kl_loss(rows, head_V_H, chunk_size=chunk_size, temperature=temperature,
                                               reduction="sum", **kw)
                total = total + w[0] * kl_sum
                kl_detached = float(kl_sum.detach())
            else:
                if payload == "logits":
                    kl = reverse_kl_per_token_from_teacher_logits(rows, head_V_H, t.payload_Nt_X, chunk_size,
                                                                  temperature)
                else:
                    kl = reverse_kl_per_token(rows, head_V_H, t.payload_Nt_X, heads[name], chunk_size, temperature)
                total = total + (kl * w).sum()
                kl_detached = float(kl.detach().sum())
            w_mb = max(mb.weight, 1e-9)
            stats[f"kl_w.{name}"] = kl_detached / w_mb
            stats[f"n_w.{name}"] = int(t.rows_Nt.numel()) / w_mb
        return total, stats

    return loss_fn


def kl_means(metrics: dict) -> dict[str, float]:
    """``kl.<teacher>``: mean KL per token graded by that teacher, from a step's ``kl_w``/``n_w`` metrics."""
    return {f"kl.{k[5:]}": v / max(metrics.get(f"n_w.{k[5:]}", 0.0), 1e-12)
            for k, v in metrics.items() if k.startswith("kl_w.")}
