"""The run directory's reachability check of a multi-node run (pipeline.cluster): the verdict names the node that
cannot see the run directory, or whose writes land elsewhere; a node that sees it passes."""
from pathlib import Path

from pipeline.cluster import PROBE_DIR, probe_node, storage_verdict

TOKEN = "t0k3n"


def _driver(run_dir: Path) -> Path:
    folder = run_dir / PROBE_DIR
    folder.mkdir(parents=True)
    (folder / "driver").write_text(TOKEN)
    return folder


def test_a_node_that_shares_the_run_directory_passes(tmp_path, monkeypatch):
    import ray.util

    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.0.0.2")
    _driver(tmp_path)
    report = probe_node(str(tmp_path), TOKEN, "node-b-id")
    assert report["read"] and report["wrote"], report
    assert storage_verdict(str(tmp_path), TOKEN, [report]) is None


def test_a_node_that_cannot_see_the_run_directory_is_named(tmp_path, monkeypatch):
    import ray.util

    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.0.0.7")
    _driver(tmp_path)
    elsewhere = tmp_path / "not-mounted-here"          # what the node sees at the same path: nothing
    report = probe_node(str(elsewhere), TOKEN, "node-c-id")
    assert not report["read"]
    msg = storage_verdict(str(tmp_path), TOKEN, [report])
    assert msg is not None and "10.0.0.7" in msg and "cannot see it" in msg and "\n" not in msg
    assert "docs/scaling.md" in msg


def test_a_node_writing_to_its_own_copy_is_named(tmp_path):
    """The node read a token (its own copy of the folder holds one) but what it wrote never reached the driver."""
    _driver(tmp_path)
    report = {"node_id": "node-d-id", "host": "d", "ip": "10.0.0.9", "read": True, "wrote": True, "error": ""}
    msg = storage_verdict(str(tmp_path), TOKEN, [report])
    assert msg is not None and "10.0.0.9" in msg and "does not see" in msg


def test_a_node_that_did_not_answer_is_named(tmp_path):
    _driver(tmp_path)
    ok = {"node_id": "a", "host": "a", "ip": "10.0.0.1", "read": True, "wrote": True, "error": ""}
    (tmp_path / PROBE_DIR / "node-a").write_text(TOKEN)
    silent = {"node_id": "b" * 20, "ip": "10.0.0.3", "error": "no answer within 120s"}
    msg = storage_verdict(str(tmp_path), TOKEN, [ok, silent])
    assert msg is not None and "10.0.0.3" in msg and "no answer" in msg
    assert storage_verdict(str(tmp_path), TOKEN, [ok]) is None
