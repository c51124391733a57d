"""The student's optional start inside the distill stage: SFT on the union of every domain's demonstrations.

With ``distill.warmup_sft_steps: N`` the stage's first N steps are SFT steps (the SFT stage's loss and resumable
sampler, on all domains x modes mixed; batch size and length from the recipe's ``sft`` section), and the
distillation steps follow in the same learner, schedule and checkpoints. This is the "SFT on the union" start
without a separate stage; ``student_from`` still names where the weights come from.
"""
from __future__ import annotations

from specialists.data import EpochSampler, collate, sft_examples
from specialists.sft import sft_loss


class UnionSFT:
    def __init__(self, recipe, tok, tasks: dict[str, list[dict]], seed: int):
        sft = recipe.sft
        self.batch_size = sft.batch_size if sft is not None else 32
        max_len = sft.max_len if sft is not None else 256
        self.pad_id = tok.pad_token_id
        self.examples = [e for d in recipe.domains for e in sft_examples(tok, tasks[d], recipe.modes, max_len)]
        self.sampler = EpochSampler(len(self.examples), self.batch_size, seed)

    def step(self, learner, step: int):
        """One SFT step on batch ``step`` (a pure function of seed and step, so resumption is exact)."""
        mb = collate([self.examples[i] for i in self.sampler.batch(step)], self.pad_id)
        return learner.step(sft_loss, [mb]), int(mb["weight"])
