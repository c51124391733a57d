"""Sandbox zygote: a pre-started interpreter that forks one confined child per code test.

Started by ``rewards.sandbox`` as ``python -I -S -B _zygote.py CONFIG`` with an empty environment. Standard library
only (``-S``: no site-packages, the project is hidden). It creates its own namespaces (``unshare(2)`` through
ctypes), in one of two ways chosen by the parent (``cfg["userns"]``):

  * **root-namespaces** (the caller is root with ``CAP_SYS_ADMIN``): ``unshare(CLONE_NEWNS|CLONE_NEWNET|
    CLONE_NEWPID)``; the zygote is real root, the sandbox uid is a real host uid.
  * **user-namespace** (no ``CAP_SYS_ADMIN``, e.g. a default container's root, or an ordinary user): the same plus
    ``CLONE_NEWUSER``. The zygote then sends ``{"map": true}`` and waits; the parent writes this process's
    ``uid_map``/``gid_map`` and answers ``{"mapped": true}``. The caller becomes root *inside* (all capabilities
    there, none on the host). When the caller holds ``CAP_SETUID``/``CAP_SETGID`` on the host the map also has a
    second line, ``U U 1``, so untrusted code runs as the distinct non-root uid ``U`` exactly as in the root mode.
    Otherwise (``cfg["single_uid"]``: an ordinary user, who can map only ``0 <euid> 1``) untrusted code keeps
    that one mapped uid -- a non-root uid on the host, so ``RLIMIT_NPROC`` is enforced -- with every capability
    dropped (effective, permitted, inheritable, ambient, bounding set) and the ``NOROOT`` securebits locked, so
    that no ``exec`` gives them back. Nested user namespaces are refused (``max_user_namespaces`` = 0 in ours).

(A third, weaker way, ``cfg["plain"]``, the ``rlimits`` mode a recipe must opt into: no namespaces at all; the same
per-job child and rlimits, a claimed separate uid, a private job directory; clean-up by ``_confine.clear_uid``.)
Either way the process that called ``unshare`` forks: its child is PID 1 of the new PID namespace and is the
zygote proper; the first process only waits for it (and dies with the parent's ``killpg``).

Start-up (privileged inside the namespaces, before any untrusted code exists):
  * makes every mount private, mounts a fresh ``/proc`` for the new PID namespace (if the kernel refuses that in a
    user namespace, e.g. under a masked container ``/proc``, the host's ``/proc`` is covered by an empty tmpfs);
  * hides host directories (``/tmp``, ``/root``, ``/home``, ``/work``, …) under empty tmpfs mounts, re-exposing
    only the Python installation read-only, and remounts every mount read-only; ``/tmp`` becomes a small private
    tmpfs that holds the per-test working directory (a fresh one for each test);
  * pre-imports the modules tests commonly use, so a forked child starts warm.

Per job (length-prefixed JSON on stdin/stdout): fork a child that
  * starts its own session/process group, gets a fresh ``/tmp/job`` owned by the sandbox uid, stdin ``/dev/null``,
    stdout/stderr into capped pipes, every other descriptor closed (the protocol channel included);
  * sets rlimits (AS, CPU, FSIZE, NOFILE, NPROC, CORE=0), clears the environment, sets no_new_privs, and drops
    privileges: to the non-root sandbox uid/gid (so RLIMIT_NPROC applies and nothing of the zygote's can be
    signalled or ptraced) or, in the single-uid user namespace, to no capabilities at all;
  * compiles the program (a syntax error is a failure), runs it, then runs the test code with a pristine copy of
    the builtins, then ``check(entry_point)`` with tracing/profiling reset;
  * only after ``check`` returns, reads a random nonce that the zygote generated *after* the fork (so it is not in
    the child's memory while untrusted code runs) and writes it to the result pipe. Exiting early (``exit(0)``,
    ``os._exit(0)``, a signal) therefore cannot produce a pass.
The zygote enforces the wall clock, kills the child's process group and then every other process of its PID
namespace (``kill(-1)`` from PID 1 reaches exactly those, ``setsid`` escapees included), reaps them until it has
no child left, and replaces ``/tmp`` with a fresh tmpfs.
"""
import builtins
import fcntl
import json
import os
import resource
import select
import signal
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # _confine.py, beside this file (-I drops it)
from _confine import (  # noqa: E402  (stdlib only, like this file)
    CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, _libc, _err, _prctl, _caps, drop_all_capabilities, fresh_tmp, setup_filesystem,
    clear_uid, plain_setup)

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
        work = cfg.get("workroot", "/tmp") + "/job"
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
        if cfg.get("single_uid"):
            # the one mapped uid (non-root on the host) stays; every capability goes (setgroups is denied here)
            drop_all_capabilities()
        else:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid or any(_caps()):
            raise OSError("privilege drop failed")
        sys.argv = ["solution"]
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        clean_builtins = dict(builtins.__dict__)
        entry = job["entry_point"]
    except BaseException as e:  # noqa: BLE001 — the sandbox's own set-up failed: no judgement (the parent counts it)
        _write(3, b"FAIL setup_error " + type(e).__name__.encode() + b" " + str(e)[:200].encode(errors="replace"))
        _exit(1)
    try:
        code = compile(job["program"], "<solution>", "exec")
    except SyntaxError:
        _write(3, b"FAIL syntax_error")
        _exit(1)
    except BaseException as e:  # noqa: BLE001 — null bytes, nesting too deep: the program's fault
        _write(3, b"FAIL compile_error " + type(e).__name__.encode()[:100])
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


def clear_namespace(timeout=3.0):
    """Kill and reap every process of this PID namespace but the zygote (PID 1), escapees of the process group and
    zombies included. ``kill(-1)`` from PID 1 reaches all of them and nothing outside the namespace; once
    ``waitpid`` finds no child, none is left (every process here descends from PID 1, orphans are re-parented to
    it). Returns False if something survived ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                break
        if time.monotonic() > end:
            return False
        time.sleep(0.002)


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
    cleared = clear_uid(cfg["uid"]) if cfg.get("plain") else clear_namespace()
    for fd in bufs:
        os.close(fd)
    if cleared and cfg.get("plain"):
        import shutil

        shutil.rmtree(cfg["workroot"] + "/job", ignore_errors=True)
        cleared = not os.path.exists(cfg["workroot"] + "/job")
    elif cleared:
        fresh_tmp(cfg["tmp_mb"])
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
            "stderr": bytes(bufs[err_r][:cap]).decode(errors="replace"), "retired": not cleared}


def _flag_names(flags):
    names = [n for n, b in (("CLONE_NEWUSER", CLONE_NEWUSER), ("CLONE_NEWNS", CLONE_NEWNS),
                            ("CLONE_NEWNET", CLONE_NEWNET), ("CLONE_NEWPID", CLONE_NEWPID)) if flags & b]
    return "|".join(names)


def enter_namespaces(cfg):
    """Runs in the process the parent started. Creates the namespaces, gets the uid map written (user-namespace
    mode), then forks: the child returns (it is PID 1 of the new PID namespace); this process waits for it and
    exits with its status. Raises OSError with one line on failure."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | (CLONE_NEWUSER if cfg.get("userns") else 0)
    if _libc.unshare(flags) != 0:
        raise OSError(_err(f"unshare({_flag_names(flags)})"))
    if cfg.get("userns"):
        _send({"map": True})                     # the parent writes /proc/<this pid>/{uid,gid}_map
        msg = _recv()
        if not msg or not msg.get("mapped"):
            raise OSError("the parent did not write the uid map")
        if os.getuid() != 0 or os.getgid() != 0:
            raise OSError(f"uid map not applied (uid {os.getuid()}, gid {os.getgid()})")
    pid = os.fork()
    if pid == 0:
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)                             # only PID 1 talks to the parent: EOF comes when it is gone
    while True:
        try:
            _, st = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(1)
    os._exit(os.waitstatus_to_exitcode(st) & 0xFF if os.WIFEXITED(st) else 1)


def main():
    cfg = json.loads(sys.argv[1])
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if cfg.get("plain"):   # the opt-in weaker mode: no namespaces, no filesystem set-up (see _confine.plain_setup)
        try:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            _prctl(PR_SET_DUMPABLE, 0)
            cfg["workroot"] = plain_setup()
        except BaseException as e:  # noqa: BLE001
            _send({"ready": False, "error": " ".join(str(e).split())[:500]})
            os._exit(3)
        return serve(cfg, {"ready": True, "pid": os.getpid(), "uid": os.getuid(), "workroot": cfg["workroot"]})
    try:
        enter_namespaces(cfg)
        # PID 1 from here on
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)      # dies with the first process, so with the parent's killpg
        _prctl(PR_SET_DUMPABLE, 0)                     # no ptrace / /proc/1/mem even for a same-uid process
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                    signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)         # PID 1 with no handler: signals from inside are dropped
        if os.getpid() != 1:
            raise OSError("zygote must be PID 1 of its own PID namespace")
        proc = setup_filesystem(cfg["hide"], cfg["expose"], cfg["tmp_mb"], bool(cfg.get("userns")))
    except BaseException as e:  # noqa: BLE001 — one line for the parent, which reports why isolation failed
        msg = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        try:
            _send({"ready": False, "error": " ".join(msg.split())[:500]})
        except OSError:
            pass
        os._exit(3)
    serve(cfg, {"ready": True, "pid": os.getpid(), "uid": os.getuid(), "proc": proc})


def serve(cfg, ready):
    for m in PRELOAD:
        try:
            __import__(m)
        except ImportError:
            pass
    _send(ready)
    while True:
        job = _recv()
        if job is None:
            return
        try:
            res = run_job(job, cfg)
        except Exception as e:  # noqa: BLE001 — reported; a fresh zygote takes over (below)
            res = {"passed": False, "status": f"sandbox_error {type(e).__name__}: {e}", "time_s": 0.0,
                   "stdout": "", "stderr": "", "retired": True}
        _send(res)
        if res.get("retired"):  # something survived the clear-out, or the job broke the zygote: leave (the kernel
            return              # kills what is left of the namespace); the parent starts a fresh zygote


if __name__ == "__main__":
    main()
