"""One line for an error, whatever wrapped it on the way (Ray wraps a remote task's or actor's exception in a
``RayTaskError`` whose own first line only names the actor method: the line to show is its cause's)."""
from __future__ import annotations


def root_error(e: BaseException) -> BaseException:
    """The exception a Ray error wraps (``.cause``, through several hops), else ``e`` itself."""
    seen = set()
    while getattr(e, "cause", None) is not None and isinstance(e.cause, BaseException) and id(e) not in seen:
        seen.add(id(e))
        e = e.cause
    return e


def error_line(e: BaseException, limit: int = 500) -> str:
    """``Type: message`` of the root error, its first non-blank line, at most ``limit`` characters."""
    root = root_error(e)
    lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
    return f"{type(root).__name__}: {lines[0] if lines else ''}"[:limit]


__all__ = ["error_line", "root_error"]
