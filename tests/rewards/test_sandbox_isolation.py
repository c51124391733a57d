"""Where no namespace isolation is possible: the one-line refusal says how to enable it, and a recipe can opt into the
weaker ``rlimits`` isolation (``sandbox: {isolation: auto|rlimits}``), which really runs code under rlimits as a
separate uid and is recorded -- in the stage's manifest, its log and the report.

The refusing kernel is made for real, as in test_sandbox_modes.py, but with a user namespace that maps a wide uid
range (so a separate uid exists in it): there ``user.max_user_namespaces`` is set to 0 and CAP_SYS_ADMIN dropped."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rewards import sandbox as sb
from rewards import sandbox_probe

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = {"prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n", "entry_point": "add",
          "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
          "timeout_s": 3}
SETPRIV_NO_SYS_ADMIN = ["--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", "--"]
# a user namespace mapping uids/gids 0..10M to themselves, user namespaces refused inside, then "$@"
WIDE_USERNS = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    if libc.unshare(0x10000000) != 0:
        os._exit(90)
    os.write(ready_w, b"1")
    os.read(go_r, 1)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
    os.execvp(sys.argv[1], sys.argv[1:])
os.read(ready_r, 1)
for name in ("uid_map", "gid_map"):
    with open(f"/proc/{pid}/{name}", "w") as f:
        f.write("0 0 10000000\n")
os.write(go_w, b"1")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def _refusing_kernel(script: str, *args: str, timeout=180) -> subprocess.CompletedProcess:
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root (to map a wide uid range into a user namespace) and setpriv")
    cmd = [sys.executable, "-c", WIDE_USERNS, setpriv, *SETPRIV_NO_SYS_ADMIN, sys.executable, "-c", script, *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if r.returncode == 90:
        pytest.skip("cannot create a user namespace here")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_the_refusal_says_how_to_enable_isolation(monkeypatch):
    """The one line names each refusal, then the container flags, the sysctls and the recipe's opt-in."""
    monkeypatch.setattr(sandbox_probe, "_probed", {"namespaces": (None, "namespaces as root: not root; user "
                                                                  "namespace: unshare(...): EPERM")})
    monkeypatch.setattr(sandbox_probe, "_isolation", "namespaces")
    with pytest.raises(sb.SandboxUnavailable) as e:
        sb.require_sandbox()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("no isolation possible for the code sandbox (sandbox.isolation: "
                                              "namespaces): namespaces as root: not root; user namespace:")
    for hint in ("--security-opt seccomp=unconfined", "--cap-add SYS_ADMIN", "kernel.unprivileged_userns_clone=1",
                 "user.max_user_namespaces", "`sandbox: {isolation: rlimits}`"):
        assert hint in msg, hint
    with pytest.raises(ValueError):
        sb.set_isolation("none")


@pytest.fixture
def rlimits_pool(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the rlimits mode runs code as a separate uid: needs root (CAP_SETUID)")
    monkeypatch.setattr(sandbox_probe, "_isolation", "rlimits")
    assert sb.require_sandbox() == "rlimits"
    p = sb.SandboxPool(1)
    yield p
    p.close()


def _alive(uid: int) -> list[str]:
    """Processes of ``uid`` that are not zombies (a killed orphan waits for this machine's init to reap it)."""
    out = subprocess.run(["ps", "-o", "pid=,stat=", "-u", str(uid)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[1:2] != ["Z"] and not line.split()[1].startswith("Z")]


def _run(pool, program, test="def check(c):\n    pass\n", timeout=5):
    return pool.run(program, test, "f", timeout)


def test_rlimits_mode_runs_code_as_a_separate_uid_under_rlimits(rlimits_pool):
    p = rlimits_pool
    assert p.mode == "rlimits"
    r = _run(p, "def f():\n    return 1\n", "def check(c):\n    assert c() == 1\n")
    assert r["passed"] and r["status"] == "passed", r
    z = p._all[0]
    assert z.mode == "rlimits" and z.uid >= 1000 and os.path.isdir(z.workroot)
    probe = ("import json, os, resource as R\nprint(json.dumps([os.getuid(), os.getgid(), os.getgroups(), "
             "[R.getrlimit(x)[0] for x in (R.RLIMIT_AS, R.RLIMIT_NPROC, R.RLIMIT_NOFILE, R.RLIMIT_FSIZE, "
             "R.RLIMIT_CORE)], sorted(os.environ), os.getcwd(), "
             "open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0]]))\ndef f():\n    return 1\n")
    r = _run(p, probe)
    assert r["passed"], r
    uid, gid, groups, lims, env, cwd, nnp = json.loads(r["stdout"])
    assert uid == z.uid and gid == z.uid and groups == [] and nnp == "1"
    assert lims == [1024 << 20, 16, 64, 16 << 20, 0]
    assert env == ["HOME", "LANG", "PATH", "TMPDIR"] and cwd == z.workroot + "/job"
    # the wall clock holds, and a setsid escapee of the uid is killed with the job
    t0 = time.monotonic()
    r = _run(p, "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n", timeout=1)
    assert r["status"] == "timeout" and time.monotonic() - t0 < 5, r
    assert _alive(z.uid) == []
    # a fork bomb stops at RLIMIT_NPROC (enforced: the uid is not root); root-only files stay closed
    r = _run(p, "import os\nfor _ in range(100):\n    os.fork()\n", timeout=3)
    assert not r["passed"], r
    r = _run(p, "def f():\n    return open('/etc/shadow').read()\n", "def check(c):\n    c()\n")
    assert not r["passed"] and "PermissionError" in r["status"], r
    # nothing of a job stays in its directory; the next job starts clean
    _run(p, "open('x', 'w').write('1')\ndef f():\n    return 1\n")
    r = _run(p, "import os\ndef f():\n    return os.listdir('.')\n", "def check(c):\n    assert c() == []\n")
    assert r["passed"], r
    assert p._all[0] is z and z.alive()
    # the zygote dies mid-job: the pool's clean-up takes the job's escapees (no PID namespace to end them) and the
    # zygote's directory with it
    import signal
    import threading

    threading.Timer(0.5, lambda: os.killpg(z.proc.pid, signal.SIGKILL)).start()
    r = _run(p, "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n",
             timeout=10)
    assert r["status"] == "sandbox_error: zygote lost", r
    assert _alive(z.uid) == []
    assert not os.path.exists(z.workroot or "/nonexistent")


REFUSED = """
import json
from rewards.base import score
from rewards.sandbox import SandboxUnavailable, get_pool, require_sandbox
out = {}
try:
    out["namespaces"] = require_sandbox()
except SandboxUnavailable as e:
    out["namespaces"] = "refused: " + str(e)
out["auto"] = require_sandbox(isolation="auto")
v = score("code", "    return a + b\\n", %r, "non_think")
w = score("code", "    return a - b\\n", %r, "non_think")
out.update(score=v.score, wrong=w.score, mode=get_pool().mode, uid=get_pool()._all[0].uid)
print(json.dumps(out))
"""


def test_a_refusing_kernel_with_auto_uses_rlimits():
    """Namespaces refused for real; ``namespaces`` refuses with the hint, ``auto`` falls back to ``rlimits``, which
    scores code right (a right answer 1, a wrong one 0) as a separate uid."""
    r = _refusing_kernel(REFUSED % (SAMPLE, SAMPLE))
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["namespaces"].startswith("refused: no isolation possible"), res
    assert "max_user_namespaces" in res["namespaces"] and "--security-opt seccomp=unconfined" in res["namespaces"]
    assert res["auto"] == "rlimits" and res["mode"] == "rlimits", res
    assert res["score"] == 1.0 and res["wrong"] == 0.0 and res["uid"] >= 1000, res
    assert "WEAKER isolation rlimits" in r.stderr


STAGE = """
import json, sys
from pathlib import Path
import pipeline.stages  # noqa: F401
from core.registry import STAGE_KINDS
from pipeline.graph import build_graph
from pipeline.recipe import load_recipe
from pipeline.runner import _execute_stage


def fake_run(ctx):                    # the stage's body: score one code answer (no training here)
    from rewards.base import score
    from rewards.sandbox import get_pool
    return {"reward": score("code", "    return a + b\\n", %r, "non_think").score, "pool": get_pool().mode}


object.__setattr__(STAGE_KINDS["sft"], "run", "__main__:fake_run")
recipe = load_recipe(sys.argv[1], check=False)
spec = next(s for s in build_graph(recipe) if s.id == "sft.code")
run = Path(sys.argv[2])
(run / "bootstrap" / "final").mkdir(parents=True)
out = _execute_stage(spec, str(run), ("h", "f"), {"seed": 0, "name": "t", "logging": None,
                                                  "sandbox": recipe.sandbox.isolation})
print(json.dumps(out))
"""


def test_a_stage_that_opted_in_records_the_weaker_isolation(tmp_path):
    """One level up: ``sandbox: {isolation: rlimits}`` in the recipe, the same refusing kernel: the stage starts,
    scores code, and its manifest, its log and the report say it ran with the weaker ``rlimits`` isolation."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "t", "domains": ["code"], "sft": {"steps": 2},
                                      "sandbox": {"isolation": "rlimits"}}))
    r = _refusing_kernel(STAGE % (SAMPLE,), str(recipe), str(tmp_path / "run"))
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"reward": 1.0, "pool": "rlimits"}
    stage = tmp_path / "run" / "sft.code"
    m = json.loads((stage / "manifest.json").read_text())
    assert m["status"] == "complete" and m["sandbox"]["mode"] == "rlimits", m
    assert "no network, mount or PID namespace" in m["sandbox"]["isolation"]
    assert "code sandbox: rlimits (WEAKER" in (stage / "log.txt").read_text()
    from pipeline.report import write_report

    html = write_report(tmp_path / "run").read_text()
    assert "rlimits (weaker)" in html


def test_preflight_checks_the_sandbox_with_the_recipes_isolation(monkeypatch):
    """`pipeline run`'s preflight starts the sandbox as the recipe chose: an opted-in ``rlimits`` is not refused
    there before the stage could use it."""
    from types import SimpleNamespace

    import pipeline.preflight as pf

    seen = []
    monkeypatch.setattr(sb, "require_sandbox", lambda refresh=False, isolation=None: seen.append(isolation) or "rlimits")
    sel = [SimpleNamespace(id="sft.code", scores=["code"]), SimpleNamespace(id="sft.math", scores=["math"])]
    assert pf._check_sandbox(sel, "r.yaml", "rlimits") == "starts (rlimits), for 1 stage(s) that score code"
    assert seen == ["rlimits"]
