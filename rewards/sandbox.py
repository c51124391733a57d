"""Parent side of the code sandbox: a pool of pre-started zygotes (see ``_zygote.py``), one job at a time each.

``SandboxPool.run(program, test, entry_point)`` returns ``{"passed", "status", "time_s", "stdout", "stderr"}``.
It never raises on anything the program does; if the sandbox itself cannot be built (not root, no ``unshare``,
mounts refused) it fails closed: ``passed=False`` with ``status="sandbox_unavailable: …"``.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_zygote.py")


@dataclass
class SandboxLimits:
    timeout_s: float = 10.0     # wall clock per test, enforced by the zygote (group kill + uid sweep)
    cpu_s: int = 10             # RLIMIT_CPU
    mem_mb: int = 1024          # RLIMIT_AS per process
    fsize_mb: int = 16          # RLIMIT_FSIZE
    nofile: int = 64            # RLIMIT_NOFILE
    nproc: int = 16             # RLIMIT_NPROC for the sandbox uid (enforced: the uid is not root)
    out_cap: int = 1 << 20      # bytes of stdout / stderr kept; more is an output-limit failure
    tmp_mb: int = 64            # size of the private tmpfs holding the workdir
    hide: list = field(default_factory=lambda: ["/tmp", "/var/tmp", "/dev/shm", "/root", "/home", "/work", "/run",
                                                "/srv", "/opt"])


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _uid_base() -> int:
    # distinct per owning process so RLIMIT_NPROC (counted per uid) is not shared with another pool
    return 2_000_000 + (os.getpid() % 100_000) * 64


class SandboxUnavailable(RuntimeError):
    pass


class Zygote:
    def __init__(self, index: int, limits: SandboxLimits):
        if os.geteuid() != 0:
            raise SandboxUnavailable("the sandbox needs root to create namespaces and drop to a sandbox uid")
        unshare = shutil.which("unshare") or "/usr/bin/unshare"
        if not os.path.exists(unshare):
            raise SandboxUnavailable("unshare(1) not found")
        hide = list(limits.hide)
        root = _project_root()
        if not any(root == h or root.startswith(h.rstrip("/") + "/") for h in hide):
            hide.append(root)
        expose = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)})
        cfg = {"uid": _uid_base() + index, "timeout_s": limits.timeout_s, "cpu_s": limits.cpu_s,
               "mem_mb": limits.mem_mb, "fsize_mb": limits.fsize_mb, "nofile": limits.nofile, "nproc": limits.nproc,
               "out_cap": limits.out_cap, "tmp_mb": limits.tmp_mb, "hide": hide, "expose": expose}
        self.uid = cfg["uid"]
        py = os.path.realpath(sys.executable)
        cmd = [unshare, "--net", "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private", "--",
               py, "-I", "-S", "-B", ZYGOTE, json.dumps(cfg)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={}, cwd="/", start_new_session=True, close_fds=True)
        msg = self._recv(30.0)
        if not msg or not msg.get("ready"):
            err = b""
            try:
                self.kill()
                err = self.proc.stderr.read()[-2000:]
            except Exception:  # noqa: BLE001
                pass
            raise SandboxUnavailable("zygote did not start: " + err.decode(errors="replace"))

    def _recv(self, timeout: float):
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        need = 4
        size = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, max(need - len(buf), 1))
            if not chunk:
                return None
            buf += chunk
            if size is None and len(buf) >= 4:
                size = struct.unpack(">I", buf[:4])[0]
                buf = buf[4:]
                need = size
            if size is not None and len(buf) >= size:
                return json.loads(buf[:size])

    def run(self, job: dict, timeout: float) -> dict | None:
        data = json.dumps(job).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        return self._recv(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except Exception:  # noqa: BLE001
                pass


class SandboxPool:
    """``workers`` zygotes; ``run`` is thread-safe and blocks until a zygote is free."""

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

    def _get(self, i: int) -> Zygote:
        z = self._all[i]
        if z is None or not z.alive():
            if z is not None:
                z.kill()
            z = Zygote(i, self.limits)
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
            return res
        finally:
            self._free.put(i)

    def close(self):
        for i, z in enumerate(self._all):
            if z is not None:
                try:
                    z.proc.stdin.close()
                except Exception:  # noqa: BLE001
                    pass
                z.kill()
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


__all__ = ["SandboxLimits", "SandboxPool", "SandboxUnavailable", "get_pool", "asdict"]
