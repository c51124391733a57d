"""Checks of the Ray cluster a run joins, made once at start before any stage runs.

A multi-node run needs its run directory on storage every node shares (NFS, Lustre, a mounted bucket): stages
write checkpoints, manifests and outputs there and read their dependencies' outputs from there, on whatever node
Ray puts them. ``check_shared_storage`` proves it: the driver writes a token into the run directory, a task pinned
to each alive node reads it back and writes its own, and the driver reads those. Any node that cannot see the
driver's token (or whose writes the driver cannot see) fails the run at start with one line naming that node.
"""
from __future__ import annotations

import secrets
import shutil
import socket
from pathlib import Path

from core.errors import error_line
from core.rundir import RunDirError

PROBE_DIR = ".storage-probe"


def probe_node(run_dir: str, token: str, node_id: str) -> dict:
    """Run on one node: can it read the driver's token in ``run_dir``, and write its own next to it?"""
    import ray

    out = {"node_id": node_id, "host": socket.gethostname(), "ip": ray.util.get_node_ip_address(),
           "read": False, "wrote": False, "error": ""}
    folder = Path(run_dir) / PROBE_DIR
    try:
        out["read"] = (folder / "driver").read_text() == token
        if not out["read"]:
            out["error"] = "a different token: another folder of the same name"
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e.strerror or e}"
        return out
    try:
        (folder / f"node-{node_id}").write_text(token)
        out["wrote"] = True
    except OSError as e:
        out["error"] = f"cannot write: {type(e).__name__}: {e.strerror or e}"
    return out


def storage_verdict(run_dir: str, token: str, reports: list[dict]) -> str | None:
    """The one-line error for the first node that does not share ``run_dir`` with the driver, else None.
    ``reports``: ``probe_node``'s results (a report with only ``node_id``/``ip`` and an ``error`` stands for a node
    that did not answer)."""
    folder = Path(run_dir) / PROBE_DIR
    for r in sorted(reports, key=lambda r: r.get("ip", "")):
        who = f"node {r.get('ip', '?')} ({r.get('host') or r['node_id'][:12]})"
        problem = None
        if not r.get("read"):
            problem = f"cannot see it ({r.get('error') or 'no answer'})"
        elif not r.get("wrote"):
            problem = r.get("error") or "cannot write to it"
        else:
            try:
                seen = (folder / f"node-{r['node_id']}").read_text() == token
            except OSError:
                seen = False
            if not seen:
                problem = "writes to a folder of the same name that this machine does not see"
        if problem:
            return (f"run directory {run_dir}: {who} {problem}; a multi-node run needs the run directory on "
                    "storage every node mounts at the same path (docs/scaling.md)")
    return None


def check_shared_storage(run_dir: Path, ray, timeout_s: float = 120.0) -> int:
    """Probe every alive node of the cluster (see the module docstring); raises RunDirError with the one line of
    ``storage_verdict``; returns the number of nodes checked. One node: nothing to check."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return len(nodes)
    token = secrets.token_hex(16)
    folder = Path(run_dir) / PROBE_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "driver").write_text(token)
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(probe_node)
        refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_id=n["NodeID"], soft=False)).remote(str(run_dir), token, n["NodeID"]) for n in nodes}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        reports = []
        for n in nodes:
            ref = refs[n["NodeID"]]
            if ref in ready:
                try:
                    reports.append(ray.get(ref))
                    continue
                except Exception as e:  # noqa: BLE001 -- the node's task failed: name the node
                    err = error_line(e, 200)
            else:
                err = f"no answer within {timeout_s:.0f}s"
                ray.cancel(ref, force=True)
            reports.append({"node_id": n["NodeID"], "ip": n.get("NodeManagerAddress", "?"), "error": err})
        problem = storage_verdict(str(run_dir), token, reports)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if problem:
        raise RunDirError(problem)
    return len(nodes)


__all__ = ["check_shared_storage", "probe_node", "storage_verdict", "PROBE_DIR"]
