"""Data for training stages: tokenized SFT demonstrations, padding into batches, and a resumable sampler."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from rewards.tasks import demonstration, system_message
from rollout.encoding import encode_conversation


@dataclass
class Example:
    ids: list[int]
    loss_mask: list[int]
    mode: str


def sft_examples(tok, samples: list[dict], modes: list[str], max_len: int) -> list[Example]:
    """Each sample's demonstration in the modes it trains, tokenized segment by segment (assistant-only loss
    mask): a generated task's demonstration in every mode; a `datasets` row's conversation (``example``, TRL's
    formats, read by ``train.datasets``) in the modes its reasoning decides (docs/data.md)."""
    rows = [s for s in samples if "example" in s]
    convs = [(mode, msgs) for s in samples if "example" not in s for mode in modes
             for msgs in [_generated(s, mode)]]
    if rows:
        from train.datasets import sft_conversations

        convs += sft_conversations(rows, modes)
    out = []
    for mode, msgs in convs:
        ids, mask = encode_conversation(tok, msgs, mode)
        if len(ids) > max_len:  # keep the start (the prompt) and cut the tail; the cut tokens get no loss
            ids, mask = ids[:max_len], mask[:max_len]
        if sum(mask):
            out.append(Example(ids, mask, mode))
    return out


def _generated(s: dict, mode: str) -> list[dict]:
    sys = system_message(s["domain"])
    return ([{"role": "system", "content": sys}] if sys else []) + demonstration(s, mode)


def collate(examples: list[Example], pad_id: int, device: torch.device | str | None = None) -> dict:
    """Right-padded ``input_ids_B_T``, ``attention_mask_B_T``, ``loss_mask_B_T`` (on ``device``) and the
    target-token count ``weight``."""
    T = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), T), dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.float32)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        attn[i, :len(e.ids)] = 1
        mask[i, :len(e.ids)] = torch.tensor(e.loss_mask, dtype=torch.float32)
    return to_device({"input_ids": ids, "attention_mask": attn, "loss_mask": mask,
                      "weight": float(mask[:, 1:].sum())}, device)


def to_device(batch, device):
    """Every tensor of a (nested) batch on ``device`` (None: left where it is), through dicts, lists, tuples,
    namedtuples and dataclasses (copied, never modified in place); anything else is returned as is. Copies to an
    accelerator are non-blocking; copies to the CPU are not (the caller reads them next)."""
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=torch.device(device).type != "cpu")
    if isinstance(batch, dict):
        return type(batch)((k, to_device(v, device)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        new = copy.copy(batch)
        for f in dataclasses.fields(batch):
            v = getattr(batch, f.name)
            moved = to_device(v, device)
            if moved is not v:
                object.__setattr__(new, f.name, moved)
        return new
    return batch


class EpochSampler:
    """Batch ``step`` is a pure function of (seed, step): a fresh permutation per epoch, consumed in order.

    Resuming at step k therefore continues with exactly the samples an uninterrupted run would have seen — no
    replayed or skipped data — without storing anything but the step.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [self._perm(i // self.n)[i % self.n] for i in range(start, start + self.batch_size)]
