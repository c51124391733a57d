"""Shaping functions and config, the reward CLI, and the no-torch/no-Ray import rule."""
import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from rewards.shaping import ShapingConfig, combine, format_reward, length_cost, overlong_penalty


def test_overlong_penalty_dapo():
    assert overlong_penalty(0, 100, 20) == 0.0
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(90, 100, 20) == pytest.approx(-0.5)
    assert overlong_penalty(100, 100, 20) == -1.0
    assert overlong_penalty(150, 100, 20) == -1.0
    assert overlong_penalty(101, 100, 0) == -1.0 and overlong_penalty(100, 100, 0) == 0.0
    with pytest.raises(ValueError):
        overlong_penalty(1, 10, 20)


def test_length_cost_and_format_and_combine():
    assert length_cost(100, 0.01) == pytest.approx(-1.0)
    assert format_reward("r</think>a<|end|>", "think_high") == 1.0
    assert format_reward("a", "think_high") == 0.0
    assert format_reward("a", "non_think") == 1.0 and format_reward("<think>a", "non_think") == 0.0
    assert format_reward("<|end|>", "non_think") == 0.0 and format_reward("r</think>", "think_max") == 0.0
    assert combine({"a": 1.0, "b": -0.5}, {"a": 1.0, "b": 2.0}) == 0.0
    with pytest.raises(KeyError):
        combine({"a": 1.0}, {"a": 1.0, "b": 1.0})
    with pytest.raises(KeyError):
        combine({"a": 1.0, "c": 1.0}, {"a": 1.0})
    with pytest.raises(ValueError):
        combine({"a": float("nan")}, {"a": 1.0})


def test_config_per_mode_defaults():
    c = ShapingConfig()
    nt, th, tm = (c.for_mode(m) for m in ("non_think", "think_high", "think_max"))
    assert tm.l_max > th.l_max > nt.l_max
    assert nt.length_cost_per_token > th.length_cost_per_token > tm.length_cost_per_token
    assert tm.overlong_weight < nt.overlong_weight
    # the same length costs non_think the most and think_max the least
    n = 3000
    shaped = {m: c.shaped(1.0, "x</think>y" if m != "non_think" else "y", n, m) for m in ("non_think", "think_max")}
    assert shaped["non_think"] < shaped["think_max"]


def test_config_typed_and_strict():
    with pytest.raises(ValidationError):
        ShapingConfig(bogus=1)
    with pytest.raises(ValidationError):
        ShapingConfig(modes={"non_think": {"l_max": 10, "l_buffer": 20, "length_cost_per_token": 0.0}})
    with pytest.raises(ValidationError):
        ShapingConfig(modes={"hyper": {"l_max": 10, "l_buffer": 2, "length_cost_per_token": 0.0}})
    c = ShapingConfig(modes={"think_max": {"l_max": 100, "l_buffer": 10, "length_cost_per_token": 0.0}})
    assert c.for_mode("think_max").l_max == 100 and c.for_mode("non_think").l_max == 1024


def test_cli(tmp_path, capsys):
    from rewards.cli import main
    inp = tmp_path / "in.jsonl"
    out = tmp_path / "out.jsonl"
    lines = [json.dumps({"answer": "5/6", "completion": "x</think>\\boxed{10/12}", "mode": "think_high"}),
             "not json", json.dumps({"answer": "3"}), "[1]",
             json.dumps({"answer": "3", "completion": "\\boxed{4}"}),
             json.dumps({"answer": "3", "completion": "\\boxed{3}", "mode": "weird"})]
    inp.write_text("\n".join(lines) + "\n")
    assert main(["math", "--input", str(inp), "--output", str(out), "--workers", "2"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["reward"] for r in rows] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert all("details" in r for r in rows) and rows[1]["details"]["error"].startswith("bad line")
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["count"] == 6 and summary["errors"] == 4 and summary["mean_reward"] == pytest.approx(1 / 6, abs=1e-3)
    assert "per_second" in summary
    assert main(["reward", "math", "--input", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["nodomain", "--input", str(inp)]) == 2


def test_rewards_package_imports_no_torch_no_ray():
    code = ("import sys, rewards, rewards.base, rewards.math_verifier, rewards.code, rewards.ifeval, rewards.agent, "
            "rewards.shaping, rewards.cli, rewards.pool, rewards.sandbox, rewards.envs, core.chat, rewards.tasks\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')]\n"
            "print(bad); assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
