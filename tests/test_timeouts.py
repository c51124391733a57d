"""Every test has a time limit (pytest-timeout, configured in pyproject.toml, slow tests via tests/conftest.py): a hung
test fails with its name and "Timeout", and the run goes on to the next test."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HUNG = '''
import time

import pytest


def test_hangs():
    time.sleep(120)


def test_after_the_hang():
    pass


@pytest.mark.slow
def test_slow_gets_more_time():
    time.sleep(1.5)


@pytest.mark.slow
def test_slow_hangs():
    time.sleep(120)


@pytest.mark.slow
@pytest.mark.timeout(2.5)
def test_own_timeout_wins():
    time.sleep(2)
'''


def test_config_gives_every_test_a_limit(pytestconfig):
    assert float(pytestconfig.getini("timeout")) > 0
    assert pytestconfig.getini("timeout_method") == "signal"
    assert float(pytestconfig.getini("slow_timeout")) > float(pytestconfig.getini("timeout"))


@pytest.mark.timeout(120)
def test_a_hung_test_fails_with_its_name(tmp_path):
    (tmp_path / "test_hung.py").write_text(HUNG)
    # the project's own pytest configuration and tests/conftest.py (loaded as a plugin), with 1 s / 2 s limits
    cmd = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
           "-p", "conftest", "-p", "no:cacheprovider", "-o", "timeout=1", "-o", "slow_timeout=2", "-q",
           str(tmp_path / "test_hung.py")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "COLUMNS": "300"}
    t0 = time.time()
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "FAILED test_hung.py::test_hangs - Failed: Timeout (>1.0s) from pytest-timeout." in out, out
    assert "FAILED test_hung.py::test_slow_hangs - Failed: Timeout (>2.0s) from pytest-timeout." in out, out
    assert "2 failed, 3 passed" in out, out      # the run went on; the slow tests had the larger limit
    assert time.time() - t0 < 60, out
