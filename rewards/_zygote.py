"""Sandbox zygote: a pre-started interpreter that forks one confined child per code test.

Started by ``rewards.sandbox`` as ``unshare --net --mount --pid --fork --mount-proc -- python -I -S _zygote.py CONFIG``
with a cleared environment, so it is PID 1 of a private PID namespace, in a network namespace with no interfaces
up and in a private mount namespace. Standard library only (``-S``: no site-packages, the project is hidden).

Start-up (as root, before any untrusted code exists):
  * hides host directories (``/tmp``, ``/root``, ``/home``, ``/work``, …) under empty tmpfs mounts, re-exposing
    only the Python installation read-only, and remounts every mount read-only; ``/tmp`` becomes a small private
    tmpfs that holds the per-test working directories;
  * pre-imports the modules tests commonly use, so a forked child starts warm.

Per job (length-prefixed JSON on stdin/stdout): fork a child that
  * starts its own session/process group, gets a fresh ``/tmp/job`` owned by the sandbox uid, stdin ``/dev/null``,
    stdout/stderr into capped pipes, every other descriptor closed (the protocol channel included);
  * sets rlimits (AS, CPU, FSIZE, NOFILE, NPROC, CORE=0), clears the environment, sets no_new_privs, drops to the
    non-root sandbox uid/gid (so RLIMIT_NPROC applies and nothing of root's can be signalled or ptraced);
  * compiles the program (a syntax error is a failure), runs it, then runs the test code with a pristine copy of
    the builtins, then ``check(entry_point)`` with tracing/profiling reset;
  * only after ``check`` returns, reads a random nonce that the zygote generated *after* the fork (so it is not in
    the child's memory while untrusted code runs) and writes it to the result pipe. Exiting early (``exit(0)``,
    ``os._exit(0)``, a signal) therefore cannot produce a pass.
The zygote enforces the wall clock, kills the child's process group and then every process of the sandbox uid
(``kill(-1)`` from a helper running as that uid, which reaches only this PID namespace), and removes the workdir.
"""
import builtins
import ctypes
import fcntl
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 38, 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _mount(src, tgt, fstype, flags, data=None):
    enc = lambda s: s.encode() if isinstance(s, str) else s
    if _libc.mount(enc(src), enc(tgt), enc(fstype), flags, enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {src} {tgt}: {os.strerror(e)}")


def _mountpoints():
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            mp = parts[4].encode().decode("unicode_escape")
            opts = parts[5].split(",")
            out.append((mp, opts))
    return out


def _flags(opts):
    f = 0
    for name, bit in (("nosuid", MS_NOSUID), ("nodev", MS_NODEV), ("noexec", MS_NOEXEC)):
        if name in opts:
            f |= bit
    return f


def setup_filesystem(hide, expose, tmp_size_mb):
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    keep = {p: os.open(p, os.O_PATH) for p in expose if os.path.isdir(p)}
    for d in hide:
        if os.path.isdir(d) and not os.path.islink(d):
            _mount("none", d, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for p, fd in keep.items():
        os.makedirs(p, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
        os.close(fd)
    # every mount read-only (per-mount flag: affects this namespace only)
    for mp, opts in _mountpoints():
        if mp.startswith("/proc") or mp.startswith("/sys/fs/cgroup"):
            continue
        try:
            _mount(None, mp, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _flags(opts))
        except OSError:
            if mp == "/":
                raise
    # the only writable place: a small private tmpfs for the per-test workdirs
    _mount("none", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0711,size={int(tmp_size_mb)}m")
    top = dict(_mountpoints())  # the last mount at a path is the visible one
    for mp, opts in top.items():
        if mp == "/tmp" or mp.startswith("/proc") or mp.startswith("/sys/fs/cgroup"):
            continue
        if "ro" not in opts:
            raise RuntimeError(f"mount {mp} is still writable")


PRELOAD = ("math", "re", "collections", "itertools", "functools", "heapq", "string", "hashlib", "random", "typing",
           "fractions", "decimal", "statistics", "bisect", "copy", "operator", "json", "cmath", "datetime",
           "numbers", "array", "dataclasses", "enum", "textwrap", "unicodedata", "struct", "traceback")


def _send(obj):
    data = json.dumps(obj).encode()
    _write_all(1, struct.pack(">I", len(data)) + data)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _recv():
    head = _read_exact(0, 4)
    if head is None:
        return None
    body = _read_exact(0, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


_BLOCKED_EVENTS = frozenset({"sys.settrace", "sys.setprofile", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
                             "ctypes.addressof", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
                             "sys._current_frames", "sys._getframemodulename"})


def _child(job, cfg, out_w, err_w, res_w, nonce_r):
    # --- trusted set-up, still root ---
    _exit, _write, _read = os._exit, os.write, os.read
    try:
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        devnull = os.open("/dev/null", os.O_RDONLY)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 200 + i) for i, fd in enumerate((devnull, out_w, err_w, res_w, nonce_r))]
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        os.closerange(5, 65536)
        uid = cfg["uid"]
        work = "/tmp/job"
        os.mkdir(work, 0o700)
        os.chown(work, uid, uid)
        os.chdir(work)
        mb = 1 << 20
        lim = [(resource.RLIMIT_AS, cfg["mem_mb"] * mb), (resource.RLIMIT_CPU, int(job.get("cpu_s", cfg["cpu_s"]))),
               (resource.RLIMIT_FSIZE, cfg["fsize_mb"] * mb), (resource.RLIMIT_NOFILE, cfg["nofile"]),
               (resource.RLIMIT_NPROC, cfg["nproc"]), (resource.RLIMIT_CORE, 0),
               (resource.RLIMIT_MEMLOCK, 0), (resource.RLIMIT_MSGQUEUE, 0)]
        for which, v in lim:
            resource.setrlimit(which, (v, v))
        os.environ.clear()
        os.environ.update({"HOME": work, "TMPDIR": work, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError("no_new_privs")
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise OSError("uid drop failed")
        sys.argv = ["solution"]
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        clean_builtins = dict(builtins.__dict__)
        entry = job["entry_point"]
        code = compile(job["program"], "<solution>", "exec")
    except SyntaxError:
        _write(3, b"FAIL syntax_error")
        _exit(1)
    except BaseException as e:  # noqa: BLE001 — a set-up failure is a failed test, reported
        _write(3, b"FAIL setup_error " + type(e).__name__.encode() + b" " + str(e)[:200].encode(errors="replace"))
        _exit(1)
    # Audit hooks cannot be removed: block tracing/profiling (jumping over asserts), ctypes (memory writes) and
    # gc walks (finding and patching the runner's pristine builtins); any attempt also marks the run tampered.
    tampered = []

    def _hook(event, args, _blocked=_BLOCKED_EVENTS, _t=tampered):
        if event in _blocked:
            _t.append(event)
            raise RuntimeError(f"{event} is not allowed in the sandbox")
    sys.addaudithook(_hook)
    # --- untrusted code from here on ---
    stage = b"program"
    try:
        ns = {"__name__": "__main__", "__builtins__": builtins}
        exec(code, ns)
        stage = b"test"
        tns = dict(ns)
        tns["__builtins__"] = dict(clean_builtins)
        exec(compile(job["test"], "<test>", "exec"), tns)
        stage = b"check"
        check = tns.get("check")
        cand = ns.get(entry)
        if not callable(check) or not callable(cand):
            _write(3, b"FAIL missing " + (b"check" if not callable(check) else b"entry_point"))
            _exit(1)
        check(cand)
        if tampered:
            raise RuntimeError("tampered")
    except BaseException as e:  # noqa: BLE001 — includes SystemExit raised by the program
        try:
            name = type(e).__name__.encode()[:100]
        except BaseException:  # noqa: BLE001
            name = b"?"
        _write(3, b"FAIL " + stage + b" " + name)
        _exit(1)
    if tampered:
        _write(3, b"FAIL tampered " + tampered[0].encode())
        _exit(1)
    nonce = _read(4, 64)
    _write(3, b"PASS " + nonce)
    _exit(0)


def _sweep(uid):
    """Kill every process of the sandbox uid in this PID namespace (escapees of the process group included)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(3):
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _reap():
    while True:  # PID 1: collect orphans
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _uid_procs(uid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat("/proc/" + name).st_uid == uid:
                    out.append(int(name))
            except OSError:
                pass
    return out


def _clear_uid(uid, timeout=3.0):
    """Kill and reap until no process of the sandbox uid is left (zombies included)."""
    end = time.monotonic() + timeout
    _reap()
    while _uid_procs(uid) and time.monotonic() < end:
        _sweep(uid)
        _reap()
        if _uid_procs(uid):
            time.sleep(0.005)


def run_job(job, cfg):
    cap = cfg["out_cap"]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    nonce_r, nonce_w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(0), os.close(out_r), os.close(err_r), os.close(res_r), os.close(nonce_w)
            _child(job, cfg, out_w, err_w, res_w, nonce_r)
        finally:
            os._exit(1)
    for fd in (out_w, err_w, res_w, nonce_r):
        os.close(fd)
    nonce = os.urandom(16).hex().encode()  # drawn after the fork: never in the child's memory before it asks
    os.write(nonce_w, nonce)
    os.close(nonce_w)
    bufs = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
    open_fds = set(bufs)
    deadline = t0 + float(job.get("timeout_s", cfg["timeout_s"]))
    status = None
    exited = None
    while True:
        if exited is None:
            wpid, wst = os.waitpid(pid, os.WNOHANG)
            if wpid:
                exited = wst
        if exited is not None and not open_fds:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            status = "timeout"
            break
        r, _, _ = select.select(list(open_fds), [], [], min(left, 0.05))
        for fd in r:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            bufs[fd] += chunk
            if len(bufs[fd]) > cap:
                status = "output_limit"
        if status:
            break
        if exited is not None and open_fds:
            # the child is gone; descriptors held open by escaped grandchildren must not stall us
            r, _, _ = select.select(list(open_fds), [], [], 0)
            if not r:
                break
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if exited is None:
        try:
            _, exited = os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    _clear_uid(cfg["uid"])
    for fd in bufs:
        os.close(fd)
    shutil.rmtree("/tmp/job", ignore_errors=True)
    res = bytes(bufs[res_r])
    passed = status is None and res == b"PASS " + nonce
    if status is None:
        if res.startswith(b"FAIL "):
            status = res[5:].decode(errors="replace")[:300]
        elif res.startswith(b"PASS "):
            status = "passed" if passed else "forged_pass"
        elif exited is not None and os.WIFSIGNALED(exited):
            status = "killed_by_signal_" + signal.Signals(os.WTERMSIG(exited)).name
        else:
            status = "no_result (exited before the tests completed)"
    return {"passed": passed, "status": status, "time_s": time.monotonic() - t0,
            "stdout": bytes(bufs[out_r][:cap]).decode(errors="replace"),
            "stderr": bytes(bufs[err_r][:cap]).decode(errors="replace")}


def main():
    cfg = json.loads(sys.argv[1])
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if os.getpid() != 1:
        raise SystemExit("zygote must be PID 1 of its own PID namespace")
    setup_filesystem(cfg["hide"], cfg["expose"], cfg["tmp_mb"])
    for m in PRELOAD:
        try:
            __import__(m)
        except ImportError:
            pass
    _send({"ready": True, "pid": os.getpid()})
    while True:
        job = _recv()
        if job is None:
            return
        try:
            res = run_job(job, cfg)
        except Exception as e:  # noqa: BLE001 — the zygote must keep serving
            res = {"passed": False, "status": f"sandbox_error {type(e).__name__}: {e}", "time_s": 0.0,
                   "stdout": "", "stderr": ""}
        _send(res)


if __name__ == "__main__":
    main()
