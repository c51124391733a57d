"""`pipeline report` on a synthetic run directory with every kind of stage: the plots exist, are non-empty PNGs and
the HTML references each of them; absent stages are skipped; optionally the page renders in headless Chromium."""
import json
import shutil
import subprocess

import pytest

from pipeline.report import heatmap_data, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _stage(run_dir, sid, kind, rows, t0, t1, status="complete", **extra):
    d = run_dir / sid
    d.mkdir(parents=True)
    m = {"id": sid, "kind": kind, "status": status, "started": f"2026-01-01T00:{t0:02d}:00+0000",
         "finished": f"2026-01-01T00:{t1:02d}:00+0000" if t1 is not None else None,
         "resources": {"num_cpus": 1, "num_gpus": 0}, "metrics": {"x": 1.0}, **extra}
    (d / "manifest.json").write_text(json.dumps(m))
    lines = [json.dumps({"step": i + 1, "time": 1.0 + i, **r}) + "\n" for i, r in enumerate(rows)]
    (d / "metrics.jsonl").write_text("".join(lines))


@pytest.fixture
def run_dir(tmp_path):
    rd = tmp_path / "run"
    _stage(rd, "bootstrap", "bootstrap", [], 0, 1)
    _stage(rd, "sft.math", "sft", [{"loss": 3.0 / (i + 1)} for i in range(10)], 1, 3)
    _stage(rd, "grpo.math.think_max", "grpo",
           [{"reward": 0.1 * i, "accuracy": 0.05 * i, "response_length": 50 + i, "kl": 0.01 * i,
             "clip_frac": 0.02, "entropy": 1.0} for i in range(8)], 3, 6)
    _stage(rd, "grpo.math.non_think", "grpo", [], 3, None, status="failed", error="RuntimeError: boom")
    _stage(rd, "distill", "distill", [{"kl.math.think_max": 1.0 / (i + 1), "kl.math.non_think": 0.5,
                                       "loss": 1.0} for i in range(6)], 6, 9)
    (rd / "eval").mkdir()
    rows = []
    for model in ("bootstrap", "sft.math", "grpo.math.think_max", "distill"):
        for mode in ("non_think", "think_max"):
            if model.startswith("grpo") and mode != "think_max":
                continue
            rows += [{"model": model, "domain": "math", "mode": mode, "metric": m, "value": v, "n": 8}
                     for m, v in (("reward_mean", 0.5), ("accuracy", 0.25), ("length_mean", 40.0), ("pass@1", 0.3))]
    (rd / "eval" / "results.json").write_text(json.dumps(rows))
    return rd


def test_report_plots_and_html(run_dir):
    index = write_report(run_dir)
    assert index == run_dir / "report" / "index.html"
    html = index.read_text()
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert set(pngs) == {"timeline.png", "heatmap_reward_mean.png", "grpo_grpo_math_think_max.png", "sft_loss.png",
                         "distill_kl.png"}
    for name in pngs:
        data = (index.parent / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, name
        assert f'src="{name}"' in html
    assert "http://" not in html and "https://" not in html and "<script" not in html   # self-contained
    assert "failed: RuntimeError: boom" in html
    assert "<td>pass@1</td>" not in html and "pass@1</th>" in html                       # eval table columns
    assert html.count("<tr>") >= 6 + 7


def test_heatmap_marks_unevaluated_cells(run_dir):
    models, cols, grid = heatmap_data(json.loads((run_dir / "eval" / "results.json").read_text()))
    assert models == ["bootstrap", "sft.math", "grpo.math.think_max", "distill"]
    assert cols == ["math.non_think", "math.think_max"]
    assert grid[2] == [None, 0.5]


def test_report_with_only_bootstrap(tmp_path):
    rd = tmp_path / "run"
    _stage(rd, "bootstrap", "bootstrap", [], 0, 1)
    index = write_report(rd)
    assert [p.name for p in index.parent.glob("*.png")] == ["timeline.png"]
    assert "Evaluation" not in index.read_text()


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    index = write_report(run_dir)
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1100,1800",
                    f"--screenshot={shot}", index.as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 20000
