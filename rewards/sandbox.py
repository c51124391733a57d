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
Every mode gives the same guarantees (docs/rewards.md). Where none works (namespaces refused and user namespaces
refused), ``require_sandbox()`` raises ``SandboxUnavailable`` with one line saying why -- a stage that scores code
calls it at its start -- and the pool fails closed: ``passed=False``, ``status="sandbox_unavailable: …"``, with a
warning logged once.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import select
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
    timeout_s: float = 10.0     # wall clock per test, enforced by the zygote (group kill + namespace sweep)
    cpu_s: int = 10             # RLIMIT_CPU
    mem_mb: int = 1024          # RLIMIT_AS per process
    fsize_mb: int = 16          # RLIMIT_FSIZE
    nofile: int = 64            # RLIMIT_NOFILE
    nproc: int = 16             # RLIMIT_NPROC for the sandbox uid (enforced: never host uid 0)
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


ROOT_NS, USER_NS, USER_NS_1UID = "root-namespaces", "user-namespace", "user-namespace-single-uid"
CAP_SETGID, CAP_SETUID = 6, 7
_PROBE_INDEX = 63  # the probe zygote's sandbox uid slot (pools use 0..workers-1)


def _cap_effective() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _can_map_other_ids() -> bool:
    caps = _cap_effective()
    return bool(caps >> CAP_SETUID & 1 and caps >> CAP_SETGID & 1)


def _write_id_maps(pid: int, uid: int | None):
    """Map the caller to root inside the user namespace of `pid`; with `uid`, also map host uid/gid `uid` to the
    same ids inside (needs CAP_SETUID/CAP_SETGID here). Without it only the caller's own ids can be mapped, and
    setgroups must be denied first."""
    euid, egid = os.geteuid(), os.getegid()
    if uid is None:
        files = [("setgroups", "deny"), ("uid_map", f"0 {euid} 1\n"), ("gid_map", f"0 {egid} 1\n")]
    else:
        files = [("uid_map", f"0 {euid} 1\n{uid} {uid} 1\n"), ("gid_map", f"0 {egid} 1\n{uid} {uid} 1\n")]
    for name, text in files:
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY)
        try:
            os.write(fd, text.encode())   # one write: the kernel takes a map in a single write only
        except OSError as e:
            raise SandboxUnavailable(f"writing {name} ({text.strip()!r}): {e.strerror}") from None
        finally:
            os.close(fd)


class Zygote:
    """One zygote process. ``mode`` is ``ROOT_NS`` (real root in new mount/net/PID namespaces), ``USER_NS`` (the
    same inside a new user namespace where the caller is root and host uid ``self.uid`` is mapped to itself) or
    ``USER_NS_1UID`` (a user namespace mapping only the caller, whose capabilities the child drops)."""

    def __init__(self, index: int, limits: SandboxLimits, mode: str = ROOT_NS):
        if mode not in (ROOT_NS, USER_NS, USER_NS_1UID):
            raise ValueError(f"unknown sandbox mode {mode!r}")
        if mode == ROOT_NS and os.geteuid() != 0:
            raise SandboxUnavailable("not root")
        if mode == USER_NS and not _can_map_other_ids():
            raise SandboxUnavailable("no CAP_SETUID/CAP_SETGID to map a sandbox uid")
        if mode == USER_NS_1UID and os.geteuid() == 0:
            # the only id root could map is host uid 0, which the kernel exempts from RLIMIT_NPROC
            raise SandboxUnavailable("root without CAP_SETUID/CAP_SETGID can map only uid 0 (no RLIMIT_NPROC)")
        self.mode = mode
        hide = list(limits.hide)
        root = _project_root()
        if not any(root == h or root.startswith(h.rstrip("/") + "/") for h in hide):
            hide.append(root)
        expose = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)})
        single = mode == USER_NS_1UID
        uid = 0 if single else _uid_base() + index
        # single uid: the zygote's two processes share the uid (and the RLIMIT_NPROC count) with the job
        nproc = limits.nproc + (2 if single else 0)
        cfg = {"uid": uid, "userns": mode != ROOT_NS, "single_uid": single, "timeout_s": limits.timeout_s,
               "cpu_s": limits.cpu_s, "mem_mb": limits.mem_mb, "fsize_mb": limits.fsize_mb, "nofile": limits.nofile,
               "nproc": nproc, "out_cap": limits.out_cap, "tmp_mb": limits.tmp_mb, "hide": hide, "expose": expose}
        self.uid = uid
        py = os.path.realpath(sys.executable)
        self.proc = subprocess.Popen([py, "-I", "-S", "-B", ZYGOTE, json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={}, cwd="/",
                                     start_new_session=True, close_fds=True)
        try:
            msg = self._recv(30.0)
            if msg and msg.get("map"):
                _write_id_maps(self.proc.pid, None if single else uid)
                self._send({"mapped": True})
                msg = self._recv(30.0)
        except BaseException:
            self.kill()
            raise
        if not msg or not msg.get("ready"):
            err = (msg or {}).get("error") or ""
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
                if not err:   # a crash before the zygote could answer: the last line of its stderr
                    tail = self.proc.stderr.read()[-2000:].decode(errors="replace").strip().splitlines()
                    err = tail[-1] if tail else ""
            except Exception:  # noqa: BLE001
                pass
            self.kill()
            raise SandboxUnavailable(err or "zygote did not start")
        self.info = msg

    def _send(self, obj) -> bool:
        data = json.dumps(obj).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

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
        if not self._send(job):
            return None
        return self._recv(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self):
        try:
            self.proc.stdin.close()
        except Exception:  # noqa: BLE001
            pass
        self.kill()

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


_LABEL = {ROOT_NS: "namespaces as root", USER_NS: "user namespace", USER_NS_1UID: "user namespace"}
_STATUS: tuple[str | None, str] | None = None      # (mode, "") or (None, one-line reason); probed once
_STATUS_LOCK = threading.Lock()
log = logging.getLogger("rewards.sandbox")

_HINTS = {ROOT_NS: [("EPERM", "needs CAP_SYS_ADMIN")],
          USER_NS: [("ENOSPC", "user.max_user_namespaces is 0 here"),
                    ("EPERM", "the kernel or a security policy refuses user namespaces (kernel.unprivileged_userns_"
                              "clone, AppArmor, seccomp)"),
                    ("EINVAL", "the kernel lacks CONFIG_USER_NS")]}
_HINTS[USER_NS_1UID] = _HINTS[USER_NS]
_PROBE_JOB = {"program": "def f():\n    return 1\n", "test": "def check(c):\n    assert c() == 1\n",
              "entry_point": "f", "timeout_s": 10.0, "cpu_s": 10}


def _candidates() -> list[tuple[str, str | None]]:
    """Modes to try, best first, each with the reason it cannot work when that is known without trying."""
    out = [(ROOT_NS, None if os.geteuid() == 0 else "not root")]
    if _can_map_other_ids():
        out.append((USER_NS, None))
    elif os.geteuid() != 0:
        out.append((USER_NS_1UID, None))
    else:
        out.append((USER_NS, "root without CAP_SETUID/CAP_SETGID can map only uid 0, which RLIMIT_NPROC does not "
                             "limit"))
    return out


def _probe() -> tuple[str | None, str]:
    if not hasattr(os, "fork") or not os.path.isdir("/proc/self"):
        return None, "the code sandbox needs Linux namespaces (no /proc here)"
    reasons = []
    for mode, known in _candidates():
        if known:
            reasons.append(f"{_LABEL[mode]}: {known}")
            continue
        z = None
        try:
            z = Zygote(_PROBE_INDEX, SandboxLimits(), mode)
            res = z.run(dict(_PROBE_JOB), 20.0)
            if res and res.get("passed"):
                return mode, ""
            reasons.append(f"{_LABEL[mode]}: a trivial test did not pass ({(res or {}).get('status', 'no answer')})")
        except (SandboxUnavailable, OSError) as e:
            why = str(e)
            for code, hint in _HINTS[mode]:
                if why.startswith("unshare(") and code in why:
                    why += f" -- {hint}"
                    break
            reasons.append(f"{_LABEL[mode]}: {why}")
        finally:
            if z is not None:
                z.close()
    return None, "no isolation possible for the code sandbox: " + "; ".join(reasons)


def _status(refresh: bool = False) -> tuple[str | None, str]:
    global _STATUS
    with _STATUS_LOCK:
        if _STATUS is None or refresh:
            _STATUS = _probe()
            if _STATUS[0]:
                log.info("code sandbox: isolation mode %s", _STATUS[0])
            else:
                log.warning("%s; every code reward would be 0", _STATUS[1])
        return _STATUS


def sandbox_status(refresh: bool = False) -> str:
    """The isolation mode the code sandbox runs in here -- ``"root-namespaces"``, ``"user-namespace"`` or
    ``"user-namespace-single-uid"`` -- or ``"unavailable: <why>"``. Probed once per process (a zygote is started
    in the best mode the process may use and runs a trivial test, ~0.2 s); ``refresh=True`` probes again."""
    mode, why = _status(refresh)
    return mode or f"unavailable: {why}"


def require_sandbox(refresh: bool = False) -> str:
    """Call at the start of anything that scores code: returns the isolation mode, or raises
    ``SandboxUnavailable`` whose message is one line saying why no isolation is possible."""
    mode, why = _status(refresh)
    if mode is None:
        raise SandboxUnavailable(why)
    return mode


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
        """``"root-namespaces"``, ``"user-namespace"``, ``"user-namespace-single-uid"`` or ``"unavailable"``."""
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
           "ROOT_NS", "USER_NS", "USER_NS_1UID", "asdict"]
