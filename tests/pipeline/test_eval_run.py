"""End to end on a tiny recipe with an eval section: `pipeline run` ends with the eval table and the report;
results.json has a reward_mean row for every (model, domain, mode) the stage is meant to cover; export works on it."""
import json

import pytest

from conftest import run_cli, tiny_recipe

pytestmark = pytest.mark.slow

MODES = ("non_think", "think_high", "think_max")


def test_run_with_eval_stage_report_and_export(tmp_path):
    recipe = tiny_recipe(tmp_path, eval={"samples": 2, "pass_k": [1, 2],
                                         "max_tokens": {m: 8 for m in MODES}})
    run_dir = tmp_path / "run"
    r = run_cli("run", recipe, "--run-dir", run_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[start] eval" in r.stdout and "\x1b[" not in r.stdout.split("[start] eval")[0][-200:]
    assert "| model | domain | mode | n | reward_mean |" in r.stdout      # the table is printed at the end
    assert "report: " in r.stdout

    rows = json.loads((run_dir / "eval" / "results.json").read_text())
    assert rows and all({"model", "domain", "mode", "metric", "value", "n", "spec"} <= set(x) for x in rows)
    assert all("ci_low" in x for x in rows if x["metric"] in ("reward_mean", "accuracy"))
    have = {(x["model"], x["domain"], x["mode"], x["metric"]): x for x in rows}
    for dom in ("math", "code"):
        for mode in MODES:
            for metric in ("reward_mean", "accuracy", "length_mean", "pass@1", "pass@2", "reward_mean_greedy"):
                assert (f"sft.{dom}", dom, mode, metric) in have
                assert ("bootstrap", dom, mode, metric) in have
            assert have[(f"sft.{dom}", dom, mode, "reward_mean_greedy")]["n"] == 3
    assert not any(x["model"] == "sft.math" and x["domain"] == "code" for x in rows)
    # the SFT rows are the SFT stage's own held-out rows (same spec: reused, not generated again)
    sft_rows = json.loads((run_dir / "sft.math" / "manifest.json").read_text())["eval_rows"]
    assert [x for x in rows if x["model"] == "sft.math"] == sft_rows
    assert "sft.math: reused its own rows for 3 cell(s)" in (run_dir / "eval" / "log.txt").read_text()
    assert (run_dir / "eval" / "results.md").read_text().startswith("# Evaluation of tiny")

    html = (run_dir / "report" / "index.html").read_text()
    for png in ("timeline.png", "curves_sft.png", "heatmap_reward_mean.png"):
        assert (run_dir / "report" / png).stat().st_size > 1000 and f'src="{png}"' in html

    r = run_cli("export", run_dir, "--stage", "sft.code", "--out", tmp_path / "exp", timeout=300)
    assert r.returncode == 0, r.stderr
    card = (tmp_path / "exp" / "README.md").read_text()
    assert "`bootstrap` → `sft.code`" in card and "| sft.code | code | think_max |" in card
