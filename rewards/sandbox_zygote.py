"""One sandbox zygote, seen from the parent: its limits, its isolation mode, starting it (and writing a user
namespace's id maps), and talking to it. ``rewards.sandbox`` pools them; ``rewards.sandbox_probe`` picks the mode.

Modes: ``root-namespaces``, ``user-namespace``, ``user-namespace-single-uid`` (docs/rewards.md), and the weaker
``rlimits`` that a recipe must opt into (``sandbox.isolation``): no namespaces at all -- the program runs as a
separate non-root uid claimed for this zygote alone, under the same rlimits, with an empty environment and
``no_new_privs``, in a fresh private directory; it shares the host's network, filesystem view and PID space.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field

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
RLIMITS = "rlimits"          # the weaker mode: rlimits and a separate uid, no namespaces (opt-in only)
NAMESPACE_MODES = (ROOT_NS, USER_NS, USER_NS_1UID)
CAP_SETGID, CAP_SETUID = 6, 7


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
    ``USER_NS_1UID`` (a user namespace mapping only the caller, whose capabilities the child drops), or ``RLIMITS``
    (no namespaces: a separate claimed uid, rlimits, a private directory; the opt-in weaker mode)."""

    def __init__(self, index: int, limits: SandboxLimits, mode: str = ROOT_NS):
        if mode not in (*NAMESPACE_MODES, RLIMITS):
            raise ValueError(f"unknown sandbox mode {mode!r}")
        self._claim = None
        self.workroot = None
        if mode == RLIMITS:
            self._start_plain(limits)
            return
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
        self._spawn(cfg, lambda: _write_id_maps(self.proc.pid, None if single else uid))

    def _start_plain(self, limits: SandboxLimits):
        """The ``rlimits`` mode: no namespaces; a separate uid, claimed (flock) for this zygote alone, because the
        zygote's clean-up kills every process of that uid."""
        if not _can_map_other_ids():
            raise SandboxUnavailable("needs CAP_SETUID/CAP_SETGID (root) to run code as a separate uid")
        self.mode = RLIMITS
        self.uid, self._claim = _claim_uid()
        cfg = {"uid": self.uid, "plain": True, "userns": False, "single_uid": False, "timeout_s": limits.timeout_s,
               "cpu_s": limits.cpu_s, "mem_mb": limits.mem_mb, "fsize_mb": limits.fsize_mb, "nofile": limits.nofile,
               "nproc": limits.nproc, "out_cap": limits.out_cap, "tmp_mb": limits.tmp_mb, "hide": [], "expose": []}
        try:
            self._spawn(cfg, None)
        except BaseException:
            _release(self._claim)
            self._claim = None
            raise
        self.workroot = self.info.get("workroot")

    def _spawn(self, cfg: dict, write_maps):
        py = os.path.realpath(sys.executable)
        self.proc = subprocess.Popen([py, "-I", "-S", "-B", ZYGOTE, json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={}, cwd="/",
                                     start_new_session=True, close_fds=True)
        try:
            msg = self._recv(30.0)
            if msg and msg.get("map") and write_maps is not None:
                write_maps()
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
        if self._claim is not None:      # rlimits mode: a job's escapees outlive the zygote (no PID namespace)
            _kill_uid(self.uid)
        if self.workroot:                 # rlimits mode: the zygote's private directory on the host
            import shutil

            shutil.rmtree(self.workroot, ignore_errors=True)
            self.workroot = None
        _release(self._claim)
        self._claim = None


CLAIMS = "/tmp/.rewards-sandbox-uids"


def _mapped_uid_ranges() -> list[tuple[int, int]]:
    """[(first, count)] of the uids that exist in this user namespace (all of them outside any)."""
    try:
        with open("/proc/self/uid_map") as f:
            return [(int(a), int(c)) for a, _, c in (line.split() for line in f if line.strip())]
    except OSError:
        return [(0, 1 << 32)]


def _claim_uid(tries: int = 4096):
    """A non-root uid for one rlimits-mode zygote, held (flock on ``CLAIMS/<uid>``) until it closes: no two
    zygotes of any process share it, since each one's clean-up kills every process of its uid."""
    ranges = [(a, c) for a, c in _mapped_uid_ranges() if a + c > 1000]
    if not ranges:
        raise SandboxUnavailable("no non-root uid is mapped here")
    first, count = max(ranges, key=lambda r: r[1])
    top = first + count - 1
    start = _uid_base() if first <= _uid_base() and _uid_base() + tries <= top else max(first, 1000, top - tries)
    os.makedirs(CLAIMS, mode=0o700, exist_ok=True)
    for uid in range(start, min(top, start + tries) + 1):
        fd = os.open(os.path.join(CLAIMS, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except OSError:
            os.close(fd)
    raise SandboxUnavailable(f"no free sandbox uid in {start}..{start + tries}")


def _kill_uid(uid: int):
    """Kill every process of the claimed ``uid`` (``kill -9 -1`` run as that uid reaches exactly those)."""
    try:
        subprocess.run(["kill", "-9", "-1"], user=uid, group=uid, extra_groups=[], env={"PATH": "/usr/bin:/bin"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pass


def _release(fd):
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


