"""A verifier worker process (started by ``rewards.pool``): import the verifiers once, then answer length-prefixed
JSON jobs ``{"domain","completion","sample","mode"}`` on stdin with a ``Verdict`` dict on stdout until stdin closes."""
from __future__ import annotations

import json
import signal
import struct
import sys

from .pool import pack


def main():
    """Inside a worker: import the verifiers once, then answer jobs until stdin closes."""
    import logging

    logging.disable(logging.WARNING)  # math-verify warns on every call that its own timeouts are off
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from . import base
    for d in ("math", "instruct", "agent"):
        try:
            base.get_verifier(d)
        except Exception:  # noqa: BLE001
            pass
    out = sys.stdout.buffer
    inp = sys.stdin.buffer
    sys.stdout = sys.stderr  # nothing a verifier prints can corrupt the protocol

    def send(obj):
        out.write(pack(obj))
        out.flush()

    send({"ready": True})
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return
        body = inp.read(struct.unpack(">I", head)[0])
        try:
            job = json.loads(body)
            v = base.score_local(job["domain"], job["completion"], job["sample"], job["mode"])
            res = {"score": v.score, "details": v.details}
            data = pack(res)
        except Exception as e:  # noqa: BLE001
            why = f"worker error: {type(e).__name__}"      # the job could not be read or answered: no judgement
            data = pack({"score": 0.0, "details": {"error": why, "verifier_error": why}})
        out.write(data)
        out.flush()
