"""`pipeline report` on a synthetic run directory with every kind of stage: the plots exist, are non-empty PNGs and
the HTML references each of them; absent stages are skipped; in headless Chromium the page shows its tables and every
plot (.ci/run installs chromium)."""
import html
import json
import re
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
    assert set(pngs) == {"timeline.png", "heatmap_reward_mean.png", "curves_sft.png", "curves_grpo.png",
                         "curves_distill.png"}
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


# What the browser shows, collected after the page (and its images) loaded; appended to a copy of the page only.
PROBE = """<script>addEventListener("load", () => {
  const text = el => el.innerText.trim();
  const out = {title: document.title, h1: text(document.querySelector("h1")),
    overflow: document.documentElement.scrollWidth > innerWidth,
    h2: [...document.querySelectorAll("h2")].map(text),
    imgs: [...document.images].map(i => ({src: i.getAttribute("src"), complete: i.complete, w: i.naturalWidth,
                                         h: i.naturalHeight, shown: i.getBoundingClientRect().width})),
    tables: [...document.querySelectorAll("table")].map(t => [...t.rows].map(r => [...r.cells].map(text)))};
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def chromium(tmp_path, *args, timeout=60):
    """Headless Chromium with a fresh profile and nothing that reaches the network; returns its stdout."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1100,1800", "--hide-scrollbars", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"chromium exited {p.returncode}: {p.stderr[-2000:]}"
    return p.stdout


def png_size(path):
    data = path.read_bytes()
    assert data.startswith(PNG), path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    index = write_report(run_dir)
    source = index.read_text()
    probe = index.with_name("probe.html")             # same folder: the relative image paths resolve the same
    probe.write_text(source.replace("</body>", PROBE + "</body>"))
    dom = chromium(tmp_path, "--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, f"the page's load handler never ran: {dom[:500]}"
    page = json.loads(html.unescape(m.group(1)))

    assert page["title"] == "run report" and page["h1"] == "Run report: run"
    assert page["h2"] == [html.unescape(h) for h in re.findall(r"<h2>(.*?)</h2>", source)]   # every section shows
    assert page["h2"][:2] == ["Stages", "Evaluation"] and len(page["h2"]) >= 3
    assert not page["overflow"]                        # nothing wider than the window
    # every plot loaded, decoded at the PNG's own size, and laid out with a width
    expected = {p.name: png_size(p) for p in index.parent.glob("*.png")}
    assert len(expected) >= 3 and sorted(i["src"] for i in page["imgs"]) == sorted(expected)
    for img in page["imgs"]:
        assert img["complete"] and img["w"] > 0 and img["shown"] > 100, img
        assert (img["w"], img["h"]) == expected[img["src"]], img

    # the tables as the browser shows them: one row per stage and per evaluated (model, domain, mode)
    stages, evals = page["tables"][:2]
    assert stages[0][:3] == ["stage", "kind", "status"]
    status = {r[0]: r[2] for r in stages[1:]}
    assert sorted(status) == sorted(p.parent.name for p in run_dir.glob("*/manifest.json"))
    assert status["grpo.math.non_think"] == "failed: RuntimeError: boom" and status["distill"] == "complete"
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert evals[0][:4] == ["model", "domain", "mode", "n"]
    assert sorted(evals[0][4:]) == sorted({r["metric"] for r in results})
    shown = {tuple(r[:3]): dict(zip(evals[0][4:], r[4:])) for r in evals[1:]}
    assert len(shown) == len(evals) - 1 and set(shown) == {(r["model"], r["domain"], r["mode"]) for r in results}
    for r in results:
        assert shown[r["model"], r["domain"], r["mode"]][r["metric"]].startswith(f"{r['value']:.3f}"), r

    # the pixels: the page as the browser painted it, neither blank nor missing the plots' colours
    import numpy as np
    from PIL import Image

    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", index.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1100, 1800)
        px = np.asarray(im.convert("RGB")).astype(int).reshape(-1, 3)
    ink = float((px.min(axis=1) < 235).mean())                        # anything not white: text, lines, plots
    colour = float((px.max(axis=1) - px.min(axis=1) > 80).mean())     # saturated: plot lines, bars, heatmap
    assert ink > 0.03 and colour > 0.005, f"page looks blank: {ink:.2%} ink, {colour:.2%} colour"
