"""bench/gpu_first_check.py: its dry mode runs every section on the CPU with vllm/ray/deepspeed/pydantic made absent
(as on a bare GPU machine), prints one verdict per section and writes figures whose equality results hold."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_first_check.py"
BLOCKED = ("vllm", "ray", "deepspeed", "pydantic")
# a bare machine: these packages are absent (None in sys.modules: `import` raises, importlib.util.find_spec says None)
SITECUSTOMIZE = f"import sys\nfor _n in {BLOCKED!r}:\n    sys.modules[_n] = None\n"


def _bare_env(tmp_path: Path) -> dict:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT")}
    env.update(PYTHONPATH=str(site), OUT=str(tmp_path / "out"), CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    return env


def test_dry_run_on_a_bare_machine(tmp_path):
    env = _bare_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import pydantic"], env=env, capture_output=True, text=True,
                           cwd=tmp_path, timeout=30)
    assert probe.returncode != 0 and "halted" in probe.stderr     # the block is in force
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry"], env=env, capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    verdicts = {ln.split()[1]: ln.split()[2] for ln in res.stdout.splitlines() if ln.startswith("VERDICT ")}
    assert verdicts == {"ipc": "ok", "fp4": "ok", "routing": "ok", "opd": "ok", "imports": "ok"}, res.stdout
    report = json.loads((tmp_path / "out" / "gpu_first_check.json").read_text())
    assert report["dry"] is True and report["device"] == "cpu"
    assert report["blocked_modules_imported"] == []
    s = {k: v["figures"] for k, v in report["sections"].items()}
    assert s["ipc"]["mode"] == "cpu_shared_memory"
    assert s["ipc"]["received_equal"] == [True, True] and s["ipc"]["child_write_seen"] == [True, True]
    checks = s["fp4"]["checks"]
    assert len(checks) >= 7 and all(all(c.values()) for c in checks.values())
    assert {"packed", "scales", "fake_quant", "ste_grad"} <= set(checks["experts_bf16"])
    assert s["routing"]["replay_exact"] and s["routing"]["replayed_agreement"] == 1.0
    assert s["routing"]["moved_agreement_without_replay"] < 1.0
    for case in ("fp32", "bf16"):
        assert s["opd"][case]["loss_rel"] < 1e-3 and s["opd"][case]["grad_head_rel"] < 3e-2
    assert s["opd"]["fp32"]["grad_hidden_rel"] < 1e-4


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_first_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bit_equality_is_strict():
    import torch
    gfc = _load_script()
    assert gfc._bits_equal(torch.tensor([1.5, 0.0]), torch.tensor([1.5, 0.0]))
    assert not gfc._bits_equal(torch.tensor([0.0]), torch.tensor([-0.0]))           # == would say equal
    assert not gfc._bits_equal(torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64))
    assert not gfc._bits_equal(torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([1, 3], dtype=torch.uint8))


def test_a_failing_section_fails_the_run(tmp_path, monkeypatch, capsys):
    gfc = _load_script()
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setattr(gfc, "check_opd", lambda dev, dry: ("FAIL", "injected", {}))
    rc = gfc.main(["--dry", "--only", "opd"])
    out = capsys.readouterr().out
    assert rc == 1 and "VERDICT opd FAIL injected" in out and "VERDICT ipc skip" in out
    report = json.loads((tmp_path / "gpu_first_check.json").read_text())
    assert report["sections"]["opd"]["verdict"] == "FAIL"


@pytest.mark.parametrize("name", ["rollout/fp4.py", "rollout/routes.py", "specialists/routing.py",
                                  "specialists/router_families.py", "distill/kl.py", "distill/kl_chunks.py"])
def test_imported_project_modules_need_only_torch_and_numpy(name):
    import ast
    allowed = {"torch", "numpy", "rollout", "specialists", "distill"} | set(sys.stdlib_module_names)
    tree = ast.parse((ROOT / name).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots <= allowed, f"{name} imports {sorted(roots - allowed)}"
