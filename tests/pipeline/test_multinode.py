"""Joining a real Ray cluster: a head and a second node on this machine, each with its own custom resource;
`pipeline run --address` sends every stage to the node its resources name, and the manifests say where it ran.

The cluster is started with `ray start --block` in new sessions and stopped by signalling exactly those process
groups (never `ray stop`, which would also stop other Ray instances on the machine).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import run_cli, tiny_recipe

pytest.importorskip("ray")
RAY = str(Path(sys.executable).with_name("ray"))

NODES = """
import json, sys, time, ray
ray.init(address=sys.argv[1], logging_level="error", log_to_driver=False)
deadline = time.time() + 90
while time.time() < deadline:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= 2:
        break
    time.sleep(1)
print(json.dumps({n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"ray start did not come up: {log.read_text(errors='replace')[-2000:] if log.exists() else ''}")


@pytest.fixture
def two_node_cluster():
    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))   # short: Ray's socket paths must stay < 108 chars
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    procs: list[subprocess.Popen] = []

    def start(args, name):
        log = tmp / f"{name}.log"
        with open(log, "w") as f:
            procs.append(subprocess.Popen([RAY, "start", "--block", *args], stdout=f, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True))
        return log

    try:
        log = start(["--head", f"--port={port}", "--num-cpus=1", "--resources", json.dumps({"node_a": 1}),
                     "--disable-usage-stats", "--include-dashboard=false", f"--temp-dir={tmp}"], "head")
        _wait_for(log, "Ray runtime started", procs[-1], 120)
        address = f"127.0.0.1:{port}"
        log = start([f"--address={address}", "--num-cpus=1", "--resources", json.dumps({"node_b": 1}),
                     "--disable-usage-stats"], "node_b")
        _wait_for(log, "Ray runtime started", procs[-1], 120)
        r = subprocess.run([sys.executable, "-c", NODES, address], capture_output=True, text=True, timeout=150,
                           env=env)
        nodes = json.loads(r.stdout.strip().splitlines()[-1])
        yield address, nodes
    finally:  # stop exactly the process groups started here: SIGTERM, then SIGKILL what is left
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 8     # a graceful `ray stop` of both nodes took ~33 s; SIGKILL of the groups is enough
        for p in procs:
            try:
                p.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_stages_land_on_the_node_their_resources_name(two_node_cluster, tmp_path):
    address, nodes = two_node_cluster
    by_res = {res: nid for nid, r in nodes.items() for res in ("node_a", "node_b") if res in r}
    assert set(by_res) == {"node_a", "node_b"} and by_res["node_a"] != by_res["node_b"], nodes

    recipe = tiny_recipe(tmp_path, name="multinode", domains=["math"],
                         tasks={"math": {"n_train": 16, "n_eval": 1}},
                         bootstrap={"resources": {"num_cpus": 1, "custom": {"node_b": 1}}},
                         sft={"steps": 2, "batch_size": 2, "max_len": 128, "save_every": 2,
                              "resources": {"num_cpus": 1, "custom": {"node_a": 1}}})
    run_dir = tmp_path / "run"
    r = run_cli("run", recipe, "--run-dir", run_dir, "--address", address, timeout=300,
                env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "run directory" in r.stdout and "shared by all 2 nodes" in r.stdout, r.stdout[-2000:]
    assert not (run_dir / ".storage-probe").exists()
    boot = json.loads((run_dir / "bootstrap" / "manifest.json").read_text())
    sft = json.loads((run_dir / "sft.math" / "manifest.json").read_text())
    assert boot["status"] == sft["status"] == "complete"
    assert boot["node"]["id"] == by_res["node_b"], (boot["node"], nodes)
    assert sft["node"]["id"] == by_res["node_a"], (sft["node"], nodes)

    # a stage that asks for a resource no node of the cluster has is refused before anything runs
    bad = tiny_recipe(tmp_path, name="nowhere", domains=["math"], tasks={"math": {"n_train": 16}}, sft=None,
                      bootstrap={"resources": {"custom": {"node_c": 1}}})
    r = run_cli("run", bad, "--run-dir", tmp_path / "run2", "--address", address, timeout=120,
                env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert r.returncode == 2 and "node_c" in r.stderr, r.stdout + r.stderr
