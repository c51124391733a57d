"""A pool of killable verifier worker processes with a hard wall-clock limit per item and a memory cap.

Each worker is a separate interpreter (``python -c …_worker_main``) that imports the verifiers once and then
answers length-prefixed JSON jobs ``{"domain","completion","sample","mode"}`` with a ``Verdict`` dict. The parent
waits for each answer with ``select`` and a deadline; a worker that overruns (a hang inside sympy, a memory blow-up
that hits its ``RLIMIT_AS``, a crash) is killed with its whole process group and replaced, and the item gets
``score 0, error "timeout …"`` (a judgement: the completion made the verifier overrun). A worker that dies twice
under one item, or a pool that cannot serve (a worker that does not start), gives a verifier failure instead
(``rewards.verdict.verifier_failure``: ``details["verifier_error"]`` set), which the stages count. This is the only real timeout for math-verify: its own SIGALRM timeouts work on the
main thread only and cannot interrupt C code, so they are switched off (``None``) inside the workers.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .verdict import Verdict, verifier_failure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_MEM_MB = int(os.environ.get("REWARDS_WORKER_MEM_MB", "4096"))
START_TIMEOUT_S = 60.0


def _limit_memory():  # runs in the child before exec
    os.setsid()
    mb = WORKER_MEM_MB * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (mb, mb))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def pack(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


class _Worker:
    def __init__(self):
        code = f"import sys; sys.path.insert(0, {ROOT!r}); from rewards.worker import main; main()"
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "VIRTUAL_ENV")}
        env["PYTHONHASHSEED"] = "0"
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                     preexec_fn=_limit_memory, close_fds=True)
        self.buf = b""
        self.is_ready = False

    def wait_ready(self):
        if self.is_ready:
            return
        msg = self.recv(START_TIMEOUT_S)
        if not msg or not msg.get("ready"):
            self.kill()
            raise RuntimeError("verifier worker did not start")
        self.is_ready = True

    def recv(self, timeout: float):
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 4:
                size = struct.unpack(">I", self.buf[:4])[0]
                if len(self.buf) >= 4 + size:
                    body, self.buf = self.buf[4:4 + size], self.buf[4 + size:]
                    return json.loads(body)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self.buf += chunk

    def send(self, obj) -> bool:
        try:
            self.proc.stdin.write(pack(obj))
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:  # noqa: BLE001
                pass


class WorkerPool:
    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._slots: list[_Worker | None] = [None] * self.workers
        self._free: queue.Queue = queue.Queue()
        for i in range(self.workers):
            self._free.put(i)
        self.replaced = 0
        # spawn every worker now (they import in parallel); a slot waits for its worker's "ready" on first use
        for i in range(self.workers):
            self._spawn(i)

    def _spawn(self, i):
        try:
            self._slots[i] = _Worker()
        except Exception:  # noqa: BLE001
            self._slots[i] = None

    def run(self, job: dict, limit_s: float) -> Verdict:
        i = self._free.get()
        t0 = time.monotonic()
        try:
            # A worker that dies under a job (killed from outside, OOM-killed, a fault) is replaced and the job
            # tried once more on the new one, so a lost worker does not turn a right answer into a 0; a second
            # death, or an overrun of the time limit, is the job's own verdict (score 0 with the error).
            for _ in range(2):
                w = self._slots[i]
                if w is None or w.proc.poll() is not None:
                    if w is not None:
                        w.kill()
                    self._slots[i] = None
                    w = self._slots[i] = _Worker()
                w.wait_ready()
                t0 = time.monotonic()
                msg = w.recv(limit_s) if w.send(job) else None
                if msg is not None:
                    return Verdict(float(msg["score"]), msg["details"])
                crashed = time.monotonic() - t0 < limit_s   # EOF before the deadline: the worker died
                w.kill()
                self._spawn(i)  # the replacement imports while the caller goes on
                self.replaced += 1
                if not crashed:
                    return Verdict(0.0, {"error": f"timeout: exceeded {limit_s:g}s hard limit",
                                         "time_s": time.monotonic() - t0})
            return verifier_failure("worker crashed (memory cap or fault), twice", time_s=time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 — never raise on model output; counted as a verifier failure
            return verifier_failure(f"pool error: {type(e).__name__}: {e}", time_s=time.monotonic() - t0)
        finally:
            self._free.put(i)

    def map(self, jobs: list[dict], limit_s: float) -> list[Verdict]:
        if len(jobs) == 1:
            return [self.run(jobs[0], limit_s)]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs))) as ex:
            return list(ex.map(lambda j: self.run(j, limit_s), jobs))

    def close(self):
        for i, w in enumerate(self._slots):
            if w is not None:
                w.kill()
                self._slots[i] = None


_POOL: WorkerPool | None = None
_LOCK = threading.Lock()


def get_pool(workers: int | None = None) -> WorkerPool:
    global _POOL
    with _LOCK:
        if _POOL is None or (workers and workers != _POOL.workers):
            if _POOL is not None:
                _POOL.close()
            _POOL = WorkerPool(workers)
        return _POOL


@atexit.register
def _close():
    if _POOL is not None:
        _POOL.close()
