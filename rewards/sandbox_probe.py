"""Which isolation the code sandbox uses in this process: the recipe's choice (``sandbox.isolation``), probed once.

  * ``namespaces`` (the default): the best namespace mode this process may use (``root-namespaces``,
    ``user-namespace``, ``user-namespace-single-uid``); where the kernel refuses them all, ``require_sandbox()``
    raises ``SandboxUnavailable``: one line naming each refusal and how to enable isolation.
  * ``auto``: the same, and where no namespace mode works, the weaker ``rlimits`` mode instead (logged as a warning).
  * ``rlimits``: always the weaker mode -- rlimits, an empty environment, ``no_new_privs`` and a separate non-root
    uid, but no network, mount or PID namespace (docs/rewards.md says what that leaves open).
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Literal

from core.config import Strict, operational

from .sandbox_zygote import (NAMESPACE_MODES, RLIMITS, ROOT_NS, USER_NS, USER_NS_1UID, SandboxLimits,
                             SandboxUnavailable, Zygote, _can_map_other_ids)

ISOLATIONS = ("namespaces", "auto", "rlimits")
_PROBE_INDEX = 63  # the probe zygote's sandbox uid slot (pools use 0..workers-1)
_LABEL = {ROOT_NS: "namespaces as root", USER_NS: "user namespace", USER_NS_1UID: "user namespace",
          RLIMITS: "rlimits"}
DESCRIBE = {ROOT_NS: "namespaces (mount, network, PID) as root, a separate uid",
            USER_NS: "namespaces (user, mount, network, PID), a separate uid",
            USER_NS_1UID: "namespaces (user, mount, network, PID), the caller's uid without capabilities",
            RLIMITS: "WEAKER: rlimits and a separate uid only -- no network, mount or PID namespace"}
ENABLE = ("to enable isolation: run the container with --security-opt seccomp=unconfined (user namespaces) or "
          "--cap-add SYS_ADMIN, or on the host set sysctl kernel.unprivileged_userns_clone=1 and "
          "user.max_user_namespaces=15000 (Ubuntu's AppArmor: kernel.apparmor_restrict_unprivileged_userns=0); or "
          "opt into the weaker isolation with `sandbox: {isolation: rlimits}` (or auto) in the recipe")
_HINTS = {ROOT_NS: [("EPERM", "needs CAP_SYS_ADMIN")],
          USER_NS: [("ENOSPC", "user.max_user_namespaces is 0 here"),
                    ("EPERM", "the kernel or a security policy refuses user namespaces (kernel.unprivileged_userns_"
                              "clone, AppArmor, seccomp)"),
                    ("EINVAL", "the kernel lacks CONFIG_USER_NS")]}
_HINTS[USER_NS_1UID] = _HINTS[USER_NS]
_PROBE_JOB = {"program": "def f():\n    return 1\n", "test": "def check(c):\n    assert c() == 1\n",
              "entry_point": "f", "timeout_s": 10.0, "cpu_s": 10}
log = logging.getLogger("rewards.sandbox")


class SandboxConfig(Strict):
    """The code sandbox's isolation (docs/rewards.md). Recorded in every code-scoring stage's manifest and log."""
    isolation: Literal["namespaces", "auto", "rlimits"] = operational("namespaces")  # namespaces; auto: namespaces, else the weaker rlimits; rlimits: always the weaker one


_isolation = os.environ.get("REWARDS_SANDBOX_ISOLATION", "namespaces")
_probed: dict[str, tuple[str | None, str]] = {}     # "namespaces" | "rlimits" -> (mode, "") or (None, why)
_LOCK = threading.Lock()


def set_isolation(isolation: str) -> None:
    """The process-wide choice (a stage sets its recipe's before it scores anything)."""
    global _isolation
    if isolation not in ISOLATIONS:
        raise ValueError(f"sandbox isolation {isolation!r}: expected one of {', '.join(ISOLATIONS)}")
    _isolation = isolation


def _candidates() -> list[tuple[str, str | None]]:
    """Namespace modes to try, best first, each with the reason it cannot work when that is known without trying."""
    out = [(ROOT_NS, None if os.geteuid() == 0 else "not root")]
    if _can_map_other_ids():
        out.append((USER_NS, None))
    elif os.geteuid() != 0:
        out.append((USER_NS_1UID, None))
    else:
        out.append((USER_NS, "root without CAP_SETUID/CAP_SETGID can map only uid 0, which RLIMIT_NPROC does not "
                             "limit"))
    return out


def _try(mode: str) -> str | None:
    """None when a zygote in ``mode`` passes a trivial test, else why not (one line)."""
    z = None
    try:
        z = Zygote(_PROBE_INDEX, SandboxLimits(), mode)
        res = z.run(dict(_PROBE_JOB), 20.0)
        if res and res.get("passed"):
            return None
        return f"a trivial test did not pass ({(res or {}).get('status', 'no answer')})"
    except (SandboxUnavailable, OSError) as e:
        why = str(e)
        for code, hint in _HINTS.get(mode, []):
            if why.startswith("unshare(") and code in why:
                return f"{why} -- {hint}"
        return why
    finally:
        if z is not None:
            z.close()


def _probe(kind: str) -> tuple[str | None, str]:
    if not hasattr(os, "fork") or not os.path.isdir("/proc/self"):
        return None, "the code sandbox needs Linux (no /proc here)"
    if kind == "rlimits":
        why = _try(RLIMITS)
        return (RLIMITS, "") if why is None else (None, f"rlimits: {why}")
    reasons = []
    for mode, known in _candidates():
        why = known or _try(mode)
        if why is None:
            return mode, ""
        reasons.append(f"{_LABEL[mode]}: {why}")
    return None, "; ".join(reasons)


def _probed_once(kind: str, refresh: bool) -> tuple[str | None, str]:
    if kind not in _probed or refresh:
        _probed[kind] = _probe(kind)
    return _probed[kind]


def _status(refresh: bool = False) -> tuple[str | None, str]:
    """(mode, "") under this process's isolation choice, or (None, the one-line refusal)."""
    with _LOCK:
        choice = _isolation
        mode, why = (None, "") if choice == "rlimits" else _probed_once("namespaces", refresh)
        if mode is None and choice in ("auto", "rlimits"):
            fresh = "rlimits" not in _probed or refresh
            mode, why_rl = _probed_once("rlimits", refresh)
            if mode:
                if fresh:
                        log.warning("code sandbox: WEAKER isolation %s (%s)%s", mode, DESCRIBE[mode],
                                f"; namespaces refused: {why}" if why else "")
                return mode, ""
            why = "; ".join(w for w in (why, why_rl) if w)
        if mode:
            return mode, ""
        return None, f"no isolation possible for the code sandbox (sandbox.isolation: {choice}): {why} -- {ENABLE}"


def sandbox_status(refresh: bool = False) -> str:
    """The isolation mode the code sandbox runs in here -- ``"root-namespaces"``, ``"user-namespace"``,
    ``"user-namespace-single-uid"`` or (opted into) ``"rlimits"`` -- or ``"unavailable: <why>"``. Probed once per
    process and choice (a zygote is started and runs a trivial test, ~0.2 s); ``refresh=True`` probes again."""
    mode, why = _status(refresh)
    return mode or f"unavailable: {why}"


def require_sandbox(refresh: bool = False, isolation: str | None = None) -> str:
    """Call at the start of anything that scores code (``isolation``: the recipe's ``sandbox.isolation``, which
    becomes this process's choice): returns the isolation mode, or raises ``SandboxUnavailable`` whose message is
    one line saying why no isolation is possible and how to enable it."""
    if isolation is not None:
        set_isolation(isolation)
    mode, why = _status(refresh)
    if mode is None:
        log.warning("%s; every code reward would be 0", why)
        raise SandboxUnavailable(why)
    return mode


__all__ = ["DESCRIBE", "ENABLE", "ISOLATIONS", "NAMESPACE_MODES", "SandboxConfig", "require_sandbox",
           "sandbox_status", "set_isolation"]
