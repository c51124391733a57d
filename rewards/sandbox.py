"""Parent side of the code sandbox: a pool of pre-started zygotes (see ``_zygote.py``), one job at a time each.

``SandboxPool.run(program, test, entry_point)`` returns ``{"passed", "status", "time_s", "stdout", "stderr"}``.
It never raises on anything the program does.

Isolation modes (probed once per process, best first; ``sandbox_status()`` / ``SandboxPool.mode`` say which):
  * ``"root-namespaces"`` -- root with ``CAP_SYS_ADMIN``: new mount, network and PID namespaces; untrusted code runs
    as a distinct non-root host uid (one per pool slot).
  * ``"user-namespace"`` -- no ``CAP_SYS_ADMIN`` (a default container's root) but ``CAP_SETUID``/``CAP_SETGID``: the
    same namespaces inside a new user namespace in which the caller is root. This process writes the zygote's
    ``uid_map``/``gid_map`` as ``0 <euid> 1`` plus ``U U 1``, so untrusted code runs as the same distinct non-root
    uid ``U`` as in the root mode.
  * ``"user-namespace-single-uid"`` -- an ordinary user: only ``0 <euid> 1`` can be mapped, so untrusted code keeps
    that uid (non-root on the host, hence ``RLIMIT_NPROC`` holds) with every capability dropped. Root without
    ``CAP_SETUID`` never uses it: its one mappable uid, host 0, is exempt from ``RLIMIT_NPROC``.
  * ``"rlimits"`` -- the weaker mode a recipe must opt into (``sandbox.isolation: auto`` or ``rlimits``): no
    namespaces; rlimits, an empty environment, ``no_new_privs`` and a separate claimed non-root uid.
The namespace modes give the same guarantees (docs/rewards.md). Where none works and the recipe did not opt into
``rlimits``, ``require_sandbox()`` (``rewards.sandbox_probe``) raises ``SandboxUnavailable`` with one line saying why
and how to enable isolation -- a stage that scores code calls it at its start. A zygote lost later (it dies, or a new
one cannot start) fails its job closed with ``status="sandbox_error: …"`` / ``"sandbox_unavailable: …"``, which the
code verifier reports as a verifier failure (``verifier_error``), counted by the stage, never as a wrong answer.
"""
from __future__ import annotations

import atexit
import os
import queue
import threading
from dataclasses import asdict

from .sandbox_probe import DESCRIBE, ISOLATIONS, SandboxConfig, require_sandbox, sandbox_status, set_isolation
from .sandbox_probe import _status
from .sandbox_zygote import (NAMESPACE_MODES, RLIMITS, ROOT_NS, USER_NS, USER_NS_1UID, SandboxLimits,
                             SandboxUnavailable, Zygote, _uid_base)


class SandboxPool:
    """``workers`` zygotes; ``run`` is thread-safe and blocks until a zygote is free. The isolation mode is probed
    once per process (``require_sandbox``) and is ``self.mode``; where none is possible every result is
    ``passed=False, status="sandbox_unavailable: …"`` (and a warning is logged)."""

    def __init__(self, workers: int | None = None, limits: SandboxLimits | None = None):
        self.limits = limits or SandboxLimits()
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._free: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._started = 0
        self._all: list[Zygote | None] = [None] * self.workers
        for i in range(self.workers):
            self._free.put(i)

    @property
    def mode(self) -> str:
        """``"root-namespaces"``, ``"user-namespace"``, ``"user-namespace-single-uid"``, ``"rlimits"`` or
        ``"unavailable"``."""
        return _status()[0] or "unavailable"

    def _get(self, i: int) -> Zygote:
        z = self._all[i]
        if z is None or not z.alive():
            if z is not None:
                z.kill()
            z = Zygote(i, self.limits, require_sandbox())
            self._all[i] = z
        return z

    def run(self, program: str, test: str, entry_point: str, timeout_s: float | None = None) -> dict:
        timeout = float(timeout_s or self.limits.timeout_s)
        job = {"program": program, "test": test, "entry_point": entry_point, "timeout_s": timeout,
               "cpu_s": max(1, int(min(self.limits.cpu_s, timeout + 1)))}
        i = self._free.get()
        try:
            try:
                z = self._get(i)
            except SandboxUnavailable as e:
                return {"passed": False, "status": f"sandbox_unavailable: {e}", "time_s": 0.0, "stdout": "",
                        "stderr": ""}
            res = z.run(job, timeout + 10.0)  # the zygote enforces `timeout`; this only guards a wedged zygote
            if res is None:
                z.kill()
                self._all[i] = None
                return {"passed": False, "status": "sandbox_error: zygote lost", "time_s": timeout, "stdout": "",
                        "stderr": ""}
            if res.pop("retired", False):   # the zygote could not clean up after this job and has exited
                z.kill()
                self._all[i] = None
            return res
        finally:
            self._free.put(i)

    def close(self):
        for i, z in enumerate(self._all):
            if z is not None:
                z.close()
                self._all[i] = None


_POOL: SandboxPool | None = None
_POOL_LOCK = threading.Lock()


def get_pool(workers: int | None = None) -> SandboxPool:
    """The process-wide pool (created on first use, grown if more workers are asked for)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or (workers and workers > _POOL.workers):
            if _POOL is not None:
                _POOL.close()
            _POOL = SandboxPool(workers)
        return _POOL


@atexit.register
def _close_pool():
    if _POOL is not None:
        _POOL.close()


__all__ = ["SandboxLimits", "SandboxPool", "SandboxUnavailable", "get_pool", "require_sandbox", "sandbox_status",
           "set_isolation", "SandboxConfig", "DESCRIBE", "ISOLATIONS", "NAMESPACE_MODES", "ROOT_NS", "USER_NS",
           "USER_NS_1UID", "RLIMITS", "Zygote", "_uid_base", "asdict"]
