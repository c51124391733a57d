"""The distill loss: Σ_teachers w · KL(student ‖ teacher) summed over completion tokens, full vocabulary.

``micro_batches`` packs trajectories (right-padded) with, per teacher, the rows of the flattened loss positions it
grades, the teacher's payload for those rows (last hidden states, or logits) and each row's weight. ``make_loss_fn``
returns a ``Learner.step`` loss function: one student forward through the *base* model (no ``[T, V]`` logits),
the last hidden states at the loss positions, then ``reverse_kl_per_token`` against each teacher chunk by chunk,
with the student's own head weight so gradients reach it too. The micro-batch ``weight`` is its token count, so
``Learner.step`` minimises the mean over tokens.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from .kl import reverse_kl_per_token, reverse_kl_per_token_from_teacher_logits

MICRO_BATCH_TOKENS = 8192      # loss positions per micro-batch (the learner accumulates gradients across them)


def micro_batches(trajs, routes_of, payloads: dict[str, list], pad_id: int,
                  max_tokens: int = MICRO_BATCH_TOKENS) -> list[dict]:
    """``routes_of(traj) -> [(teacher, weight)]``; ``payloads[name]`` lists that teacher's tensors in the order of
    the trajectories it grades. Returns micro-batch dicts for :func:`make_loss_fn`."""
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
    return [_pack(g, pad_id) for g in groups]


def _pack(group, pad_id: int) -> dict:
    T = max(len(t.ids) for t, _ in group)
    ids = torch.full((len(group), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(group), T), dtype=torch.long)
    flat, teachers = [], defaultdict(lambda: {"rows": [], "payload": [], "w": []})
    for b, (t, routes) in enumerate(group):
        ids[b, :len(t.ids)] = torch.tensor(t.ids)
        attn[b, :len(t.ids)] = 1
        rows = list(range(len(flat), len(flat) + t.n_tokens))
        flat += [b * T + p for p in t.positions]
        for name, w, payload in routes:
            e = teachers[name]
            e["rows"] += rows
            e["payload"].append(payload)
            e["w"] += [w] * t.n_tokens
    return {"input_ids": ids, "attention_mask": attn, "flat_positions": torch.tensor(flat, dtype=torch.long),
            "teachers": {k: {"rows": torch.tensor(v["rows"], dtype=torch.long),
                             "payload": torch.cat(v["payload"]), "w": torch.tensor(v["w"])}
                         for k, v in teachers.items()},
            "weight": float(len(flat))}


def student_hidden(model, mb) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden states at the loss positions ``[N, H]``, the output head weight ``[V, H]``)."""
    m = getattr(model, "module", model)
    h = m.base_model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).last_hidden_state
    head = m.get_output_embeddings().weight
    sh = h.reshape(-1, h.shape[-1]).index_select(0, mb["flat_positions"])
    return sh.to(head.dtype), head


def make_loss_fn(heads: dict[str, torch.Tensor], payload: str, chunk_size: int, temperature: float, stats: dict):
    """A ``Learner.step`` loss function; per-teacher KL sums and token counts are added to ``stats``."""

    def loss_fn(model, mb):
        sh, head = student_hidden(model, mb)
        total = sh.new_zeros(())
        for name, t in mb["teachers"].items():
            rows = sh.index_select(0, t["rows"])
            if payload == "logits":
                kl = reverse_kl_per_token_from_teacher_logits(rows, head, t["payload"], chunk_size, temperature)
            else:
                kl = reverse_kl_per_token(rows, head, t["payload"], heads[name], chunk_size, temperature)
            total = total + (kl * t["w"].to(kl.dtype)).sum()
            stats[f"kl.{name}"] = stats.get(f"kl.{name}", 0.0) + float(kl.detach().sum())
            stats[f"n.{name}"] = stats.get(f"n.{name}", 0) + kl.numel()
        return total, {}

    return loss_fn


def kl_means(stats: dict) -> dict[str, float]:
    return {k: v / max(stats[f"n.{k[3:]}"], 1) for k, v in stats.items() if k.startswith("kl.")}
