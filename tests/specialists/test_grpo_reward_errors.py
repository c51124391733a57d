"""Through the GRPO stage's own reward path (engine -> verifier pool -> shaping): verifier failures are counted in
each step's metrics row (``reward_errors``), and the stage stops with one line once they pass
``grpo.reward_errors`` -- here a verifier pool that cannot serve (its workers never become ready)."""
import json
from pathlib import Path

import pytest

from core.context import StageContext
from pipeline.graph import build_graph
from pipeline.recipe import Recipe
from rewards import pool as pool_mod
from rewards.reward_errors import RewardErrorsExceeded


def _ctx(tmp_path, tiny_dir, steps, limits):
    grpo = {"steps": steps, "group_size": 2, "prompts_per_step": 2, "minibatches": 1, "save_every": 10,
            "engine": {"kind": "hf"}, "reward_errors": limits,
            "shaping": {"modes": {"non_think": {"l_max": 8, "l_buffer": 2, "length_cost_per_token": 0.001}}},
            "learner": {"optimizer": "adamw", "lr": 1e-4, "warmup_steps": 0, "schedule": "constant"}}
    recipe = Recipe.model_validate({"name": "e", "seed": 1, "domains": ["math"], "modes": ["non_think"],
                                    "tasks": {"math": {"n_train": 10, "n_eval": 2}}, "grpo": grpo})
    spec = next(s for s in build_graph(recipe) if s.id == "grpo.math.non_think")
    return StageContext(stage_id=spec.id, kind="grpo", dir=tmp_path / "g", config=spec.config,
                        deps={"sft.math": Path(tiny_dir)}, seed=1)


@pytest.fixture
def broken_pool(monkeypatch):
    def never_ready(self):
        raise RuntimeError("verifier worker did not start")

    monkeypatch.setattr(pool_mod._Worker, "wait_ready", never_ready)


def _rows(ctx):
    p = ctx.dir / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_grpo_counts_reward_errors_and_stops_past_the_limit(tmp_path, tiny_dir, broken_pool):
    from specialists.grpo import run

    # the first step may have up to 100 failures: it trains and logs them; the second (100% > 5%) stops the stage
    ctx = _ctx(tmp_path, tiny_dir, steps=2, limits={"first_step": 100, "max_fraction": 0.05})
    with pytest.raises(RewardErrorsExceeded) as e:
        run(ctx)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("grpo.math.non_think step 1: 4 of 4 rewards were verifier failures")
    assert "pool error: RuntimeError: verifier worker did not start" in msg and "reward_errors.max_fraction" in msg
    rows = _rows(ctx)
    assert len(rows) == 1 and rows[0]["step"] == 1 and rows[0]["reward_errors"] == 4, rows


def test_grpo_default_limit_stops_at_the_first_step(tmp_path, tiny_dir, broken_pool):
    from specialists.grpo import run

    ctx = _ctx(tmp_path, tiny_dir, steps=1, limits={})
    with pytest.raises(RewardErrorsExceeded, match=r"step 0: 4 of 4 .*reward_errors\.first_step"):
        run(ctx)
    assert _rows(ctx) == []                       # nothing was trained on rewards that judged nothing
