"""The zygote's privileged set-up (``rewards/_zygote.py`` imports it before any untrusted code exists): libc through
ctypes, capabilities, mounts, and the confined filesystem (hidden host directories, read-only mounts, a private
``/proc`` and ``/tmp``). Standard library only: it runs under ``python -I -S``."""
import ctypes
import errno
import os

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 1, 4, 24, 28
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
# NOROOT, NO_SETUID_FIXUP and NO_CAP_AMBIENT_RAISE set, KEEP_CAPS clear; all four locked
SECURE_BITS_LOCKED_NOROOT = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _err(what, e=None):
    e = ctypes.get_errno() if e is None else e
    return f"{what}: {errno.errorcode.get(e, str(e))} ({os.strerror(e)})"


def _prctl(option, arg=0):
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(_err(f"prctl({option}, {arg})"))


def _caps():
    """(effective, permitted, inheritable) of this process as 64-bit masks."""
    hdr, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if _libc.capget(ctypes.byref(hdr), data) != 0:
        raise OSError(_err("capget"))
    return tuple(getattr(data[0], f) | (getattr(data[1], f) << 32) for f in ("effective", "permitted", "inheritable"))


def drop_all_capabilities():
    """Single-uid user namespace: keep the uid, lose every capability for good (exec included)."""
    _prctl(PR_SET_SECUREBITS, SECURE_BITS_LOCKED_NOROOT)     # needs CAP_SETPCAP: first
    cap = 0
    while _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    if ctypes.get_errno() != errno.EINVAL or cap < 32:       # EINVAL: past the last capability
        raise OSError(_err(f"PR_CAPBSET_DROP {cap}"))
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    hdr, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if _libc.capset(ctypes.byref(hdr), data) != 0:
        raise OSError(_err("capset"))
    if any(_caps()):
        raise OSError("capabilities still held")


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


def _mount_proc(userns):
    """A /proc of the new PID namespace. Returns "private", or "hidden" where a user namespace may not mount one
    (the kernel refuses proc mounts in a user namespace when the visible /proc is partly covered, as in containers
    that mask /proc/kcore and friends): then the host's /proc is covered later (``_hide_proc``)."""
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        return "private"
    except OSError:
        if not userns:
            raise
        return "hidden"


def _hide_proc():
    _mount("none", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "mode=0555,size=4k")


def fresh_tmp(tmp_size_mb, first=False):
    """The only writable place: a small private tmpfs on /tmp for the per-test workdir, new for every test."""
    if not first and _libc.umount2(b"/tmp", MNT_DETACH) != 0:
        raise OSError(_err("umount /tmp"))
    _mount("none", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0711,size={int(tmp_size_mb)}m")


def setup_filesystem(hide, expose, tmp_size_mb, userns=False):
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    proc = _mount_proc(userns)
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
    fresh_tmp(tmp_size_mb, first=True)
    top = dict(_mountpoints())  # the last mount at a path is the visible one
    for mp, opts in top.items():
        if mp == "/tmp" or mp.startswith("/proc") or mp.startswith("/sys/fs/cgroup"):
            continue
        if "ro" not in opts:
            raise RuntimeError(f"mount {mp} is still writable")
    if userns:
        # no nested user namespaces for sandboxed code (this limit is per user namespace: ours only)
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
    if proc == "hidden":
        _hide_proc()
    return proc


# ---- the weaker ``rlimits`` mode: no namespaces (the host's PID space, network and filesystem view)
PR_SET_CHILD_SUBREAPER = 36


def plain_setup():
    """The zygote becomes a child subreaper (orphans of a job are re-parented to it, so it can reap them) and gets a
    private directory for its jobs (root-owned, 0711); returns that directory."""
    import tempfile

    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(_err("prctl(PR_SET_CHILD_SUBREAPER)"))
    root = tempfile.mkdtemp(prefix="rewards-sandbox-", dir="/tmp")
    os.chmod(root, 0o711)
    return root


def clear_uid(uid, timeout=3.0):
    """Kill every process of the (claimed, job-only) ``uid`` -- ``kill(-1)`` from a helper running as that uid
    reaches exactly those, ``setsid`` escapees included -- and reap them (orphans come to this subreaper) until this
    process has no child left. Returns False if something survived ``timeout``."""
    import signal
    import time

    end = time.monotonic() + timeout
    while True:
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            except BaseException:  # noqa: BLE001 — ESRCH: nothing of the uid is left
                pass
            os._exit(0)
        os.waitpid(pid, 0)
        while True:
            try:
                done, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if done == 0:
                break
        if time.monotonic() > end:
            return False
        time.sleep(0.002)
