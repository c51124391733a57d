"""Verifier failures and the sandbox's isolation where a person looks: the live view shows a GRPO stage's
``reward_errors`` (0 too: the count exists), the report shows each stage's total and the isolation it ran with."""
import io
import json
import re
import time

from pipeline.graph import build_graph
from pipeline.live import LiveView, stage_progress
from pipeline.recipe import Recipe
from pipeline.report import write_report


def _graph():
    return build_graph(Recipe(name="v", domains=["math", "code"], modes=["non_think"], sft={"steps": 4},
                              grpo={"steps": 4}))


def _stage(run_dir, sid, kind, errors, **manifest):
    d = run_dir / sid
    d.mkdir(parents=True)
    t = time.time()
    rows = [{"step": i + 1, "time": t - 4 + i, "reward": 0.5, **({} if e is None else {"reward_errors": e})}
            for i, e in enumerate(errors)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "manifest.json").write_text(json.dumps({"id": sid, "kind": kind, "status": "running", **manifest}))


def test_live_view_shows_reward_errors(tmp_path):
    _stage(tmp_path, "grpo.math.non_think", "grpo", [0, 2, 1])
    _stage(tmp_path, "grpo.code.non_think", "grpo", [0, 0])
    _stage(tmp_path, "sft.math", "sft", [None, None])
    by_id = {s.id: s for s in _graph()}
    assert stage_progress(tmp_path, by_id["grpo.math.non_think"])["reward_errors"] == 3
    assert stage_progress(tmp_path, by_id["sft.math"])["reward_errors"] is None
    buf = io.StringIO()
    with LiveView(_graph(), tmp_path, stream=buf, plain_every=0) as live:
        live.tick({}, ["grpo.math.non_think", "grpo.code.non_think", "sft.math"])
    lines = {ln.split()[1]: ln for ln in buf.getvalue().splitlines()}
    assert " reward_errors=3 " in lines["grpo.math.non_think"] + " "
    assert " reward_errors=0" in lines["grpo.code.non_think"]
    assert "reward_errors" not in lines["sft.math"]
    from rich.console import Console

    live = LiveView(_graph(), tmp_path, stream=io.StringIO(), terminal=True)   # the table a terminal shows
    live.status = {"grpo.math.non_think": "running"}
    wide = Console(file=io.StringIO(), width=250, color_system=None)
    wide.print(live.render())
    assert "reward=0.5 reward_errors=3" in wide.file.getvalue()


def test_report_shows_reward_errors_and_the_isolation(tmp_path):
    run = tmp_path / "run"
    _stage(run, "grpo.math.non_think", "grpo", [0, 2, 1])
    _stage(run, "grpo.code.non_think", "grpo", [0, 0], sandbox={"mode": "rlimits", "isolation": "WEAKER: …"})
    _stage(run, "sft.code", "sft", [None], sandbox={"mode": "root-namespaces", "isolation": "namespaces"})
    page = write_report(run).read_text()
    head = re.search(r"<tr>(<th.*?)</tr>", page).group(1)
    cols = [re.sub("<.*?>", "", c) for c in re.findall(r"<th[^>]*>.*?</th>", head)]
    assert cols[6:8] == ["reward errors", "sandbox"], cols
    rows = {re.sub("<.*?>", "", tds[0]): [re.sub("<.*?>", "", c) for c in tds]
            for tds in (re.findall(r"<td[^>]*>(.*?)</td>", tr) for tr in re.findall(r"<tr>(<td.*?)</tr>", page))}
    assert rows["grpo.math.non_think"][6:8] == ["3", ""]
    assert rows["grpo.code.non_think"][6:8] == ["0", "rlimits (weaker)"]
    assert rows["sft.code"][6:8] == ["", "root-namespaces"]


def test_validate_rejects_bad_limits_and_isolation(tmp_path):
    """``pipeline validate``: a bad ``grpo.reward_errors`` or ``sandbox.isolation`` is one line, exit 2."""
    import yaml

    from conftest import run_cli, tiny_recipe

    for key, bad, needle in (("grpo", {"reward_errors": {"max_fraction": 1.5}}, "grpo.reward_errors.max_fraction"),
                             ("sandbox", {"isolation": "none"}, "sandbox.isolation")):
        f = tiny_recipe(tmp_path, name=key)
        data = yaml.safe_load(f.read_text())
        data[key] = {**(data.get(key) or {}), **bad}
        f.write_text(yaml.safe_dump(data))
        r = run_cli("validate", f, timeout=120)
        out = r.stdout + r.stderr
        assert r.returncode == 2 and needle in out and "Traceback" not in out, out
        assert len(out.strip().splitlines()) == 1, out
