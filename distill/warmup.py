"""The student's optional start inside the distill stage: SFT on the union of every domain's demonstrations.

With ``distill.warmup_sft_steps: N`` the stage first runs N SFT steps on all domains x modes mixed, each domain in the
proportion of the distillation ``mixture`` (``routing.domain_repeats``; the SFT stage's
loss and resumable sampler; batch size, length and learner overrides from the recipe's ``sft`` section, with its
own schedule over the N steps) and writes the result to ``<stage>/warm/``; distillation then starts from there
with the ``distill.learner`` settings (an SFT learning rate is far too large for the noisy on-policy KL
gradient). This is the "SFT on the union" start without a separate stage. Checkpoints share the stage's folder
and step numbering (1..N here, N+1.. for distillation), so a kill anywhere resumes exactly.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from pipeline.core.rundir import replace_dir
from specialists.data import EpochSampler, collate, sft_examples
from specialists.learner import Learner
from specialists.sft import sft_loss


def warm_start(ctx, init: Path, tok, tasks: dict[str, list[dict]], ckpts, save,
               repeats: dict[str, int] | None = None) -> Path:
    """Run (or resume, or skip when done) the union-SFT warm-up; returns the folder distillation starts from.
    ``repeats[domain]`` (default 1) is how many times a domain's demonstrations enter the union
    (``routing.domain_repeats``: the distillation mixture's proportions)."""
    cfg, recipe = ctx.config, ctx.recipe
    warm, out = cfg.warmup_sft_steps, ctx.dir / "warm"
    if not warm:
        return init
    if (out / "config.json").exists():
        return out
    sft = recipe.sft
    batch_size, max_len = (sft.batch_size, sft.max_len) if sft is not None else (32, 256)
    repeats = repeats or {}
    examples = [e for d in recipe.domains for _ in range(repeats.get(d, 1))
                for e in sft_examples(tok, tasks[d], recipe.modes, max_len)]
    sampler = EpochSampler(len(examples), batch_size, recipe.seed)
    learner = Learner(init, recipe.learner_for(sft.learner if sft is not None else {}), warm, seed=recipe.seed)
    start, latest = 0, ckpts.latest()
    if latest is not None and ckpts.step_of(latest) <= warm:
        start = learner.load(latest)["step"]
        ctx.log.info(f"[distill] warm-up resumed from {latest.name} (step {start})")
    ctx.metrics.truncate_after(start)
    bar = ctx.progress(warm, initial=start, desc="distill warm-up")
    for step in range(start, warm):
        t0 = time.perf_counter()
        mb = collate([examples[i] for i in sampler.batch(step)], tok.pad_token_id)
        res = learner.step(sft_loss, [mb])
        ctx.metrics.log(step + 1, phase="sft", loss=res.loss, lr=res.lr, grad_norm=res.grad_norm,
                        tokens=int(mb["weight"]), tokens_per_s=mb["weight"] / max(time.perf_counter() - t0, 1e-9))
        bar.update(1, sft_loss=res.loss)
        save(learner, step + 1, step + 1 == warm)
    tmp = ctx.dir / ".warm.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    learner.save_pretrained(tmp, tok)
    replace_dir(tmp, out)
    return out
