"""Hostile recipes: property-based mutations of a valid recipe (delete keys, change types, inject unknown keys, random
values, deep nesting, random YAML text, YAML oddities) are either valid or rejected by `pipeline validate` with exit 2
and exactly one line on stderr -- never a traceback. In process (``pipeline.cli.main``) for speed, plus a few
subprocess cases (also `pipeline run` and `--set`).
"""
import contextlib
import copy
import io
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from rel_helpers import GRPO, cli, record, tiny

pytestmark = pytest.mark.filterwarnings("ignore")
COUNT = {"in_process": 0, "subprocess": 0, "valid": 0, "rejected": 0}

BASE = tiny("hostile", grpo=GRPO,
            distill={"student_from": "sft.math", "steps": 2, "prompts_per_step": 2},
            eval={"n_eval": 2, "pass_k": [1, 2], "samples": 2})


def validate(path, *sets):
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["validate", str(path), *sets])
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def check(rc, out, err, what=""):
    assert "Traceback" not in out + err, (what, err[-3000:])
    assert rc in (0, 2), (what, rc, out[-500:], err[-2000:])
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(("error: ", "pipeline: ")), (what, err[:3000])
        assert len(lines[0]) < 2000, (what, lines[0][:300])
        COUNT["rejected"] += 1
    else:
        assert "ok (" in out, (what, out)
        COUNT["valid"] += 1


def _paths(node, prefix=()):
    """Every key path (dict keys and list indexes) in ``node``."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


PATHS = _paths(BASE)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, -1, 1, 2**31, -2**63]),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                    st.sampled_from(["", "~", "null", "yes", "no", "1e999", "0x1F", "-.inf", "sft.math", "{domain}",
                                     "../../etc/passwd", "/dev/zero", "math", "think_max", "auto", "a" * 5000]))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                   st.dictionaries(st.text(max_size=10), c, max_size=4)),
                      max_leaves=12)
keys = st.one_of(st.sampled_from(sorted({str(p[-1]) for p in PATHS if isinstance(p[-1], str)})), st.text(max_size=12))


def _nest(v, depth, as_list):
    for _ in range(depth):
        v = [v] if as_list else {"k": v}
    return v


@st.composite
def mutated(draw):
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for p in path[:-1]:
            parent = parent[p]
        last = path[-1]
        op = draw(st.sampled_from(["delete", "value", "inject", "nest", "type", "rename"]))
        if op == "delete":
            del parent[last]
        elif op == "value":
            parent[last] = draw(values)
        elif op == "inject":
            target = parent[last] if isinstance(parent[last], dict) else parent
            if isinstance(target, dict):
                target[draw(keys)] = draw(values)
        elif op == "nest":
            parent[last] = _nest(parent[last], draw(st.integers(1, 60)), draw(st.booleans()))
        elif op == "type":
            v = parent[last]
            parent[last] = draw(st.sampled_from([str(v), [v], {"value": v}, None, True, 3.5, -7]))
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(last)
    return data


@seed(20261128)
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutated_recipes_are_valid_or_one_line_exit_2(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("mut", numbered=True) / "r.yaml"
    f.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    check(*validate(f), what=data)
    COUNT["in_process"] += 1


@seed(20261128)
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=400),
                 st.lists(st.sampled_from(["name: x\n", "sft:\n", "  steps: 3\n", "- a\n", ": :\n", "&a [1]\n",
                                           "*a\n", "!!python/name:os.system\n", "{", "}", "[", "]", "\t", "---\n",
                                           "%YAML 1.1\n", "? x\n", "|\n", "'", '"', "\\", "\x00", "\ud800",
                                           "name: " + "9" * 5000 + "\n", "seed: 2024-01-01\n", "<<: *a\n"]),
                          max_size=20).map("".join),
                 st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_random_yaml_text_is_valid_or_one_line_exit_2(tmp_path_factory, text):
    f = tmp_path_factory.mktemp("txt", numbered=True) / "r.yaml"
    f.write_bytes(text.encode("utf-8", "surrogatepass"))
    check(*validate(f), what=text[:200])
    COUNT["in_process"] += 1


@seed(20261128)
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.one_of(st.sampled_from(["sft.steps", "seed", "name", "grpo.sampling.top_p",
                                                     "learner.lr", "sft.learner.lr", "tasks.math.n_train",
                                                     "domains", "a.b.c", "sft.steps.x", "", "."]),
                                    st.text(max_size=20)),
                          st.one_of(st.text(max_size=30), st.sampled_from(["[", "{a: 1", "9" * 5000,
                                                                          "[" * 3000, "1e999", "-1", "null"]))),
                max_size=3))
def test_random_set_overrides_are_valid_or_one_line_exit_2(tmp_path_factory, sets):
    f = tmp_path_factory.mktemp("set", numbered=True) / "r.yaml"
    f.write_text(yaml.safe_dump(BASE, sort_keys=False))
    args = [x for k, v in sets for x in ("--set", f"{k}={v}")]
    check(*validate(f, *args), what=args)
    COUNT["in_process"] += 1


SPECIAL = {
    "deep flow nesting": "name: a\nsft: " + "[" * 20000 + "]" * 20000 + "\n",
    "deep block nesting": "name: a\n" + "".join("  " * i + f"k{i}:\n" for i in range(400)) + "  " * 400 + "v: 1\n",
    "billion laughs": "name: a\nsft:\n  learner:\n    lr: &a [[[[[[[[1, 1, 1, 1, 1, 1, 1, 1, 1]]]]]]]]\n"
                      + "grpo: {shaping: {x: [*a, *a, *a, *a, *a, *a, *a, *a, *a]}}\n",
    "self reference": "name: a\nsft: &s {learner: *s}\n",
    "5000-digit int": "name: a\nseed: " + "9" * 5000 + "\n",
    "python tag": "name: !!python/object/apply:os.system ['true']\n",
    "not a mapping": "- name: a\n",
    "empty": "",
    "binary": "\x00\x01\x02\xff",
    "huge string": "name: " + "a" * (1 << 20) + "\n",
    "dates and nan": "name: a\nseed: 2024-01-01\nlearner: {lr: .nan}\nsft: {steps: .inf}\n",
}


@pytest.mark.parametrize("case", list(SPECIAL))
def test_yaml_oddities(tmp_path, case):
    f = tmp_path / "r.yaml"
    f.write_bytes(SPECIAL[case].encode("latin-1") if case == "binary" else SPECIAL[case].encode())
    check(*validate(f), what=case)
    COUNT["in_process"] += 1


def test_subprocess_cases(tmp_path):
    """The real console entry: validate and run reject bad recipes in one line with exit 2 (run before Ray starts)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPECIAL["deep flow nesting"])
    cases = [("validate", bad), ("run", bad, "--run-dir", tmp_path / "run"),
             ("validate", tmp_path), ("validate", tmp_path / "missing.yaml"),
             ("validate", bad, "--set", "seed=" + "9" * 5000), ("run", bad, "--only"), ("validate",)]
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    cases += [("validate", good, "--set", "sft.learner.xyz=1"), ("run", good, "--set", "sft.steps=-3")]
    for args in cases:
        r = cli(*args, timeout=120)
        check(r.returncode, r.stdout, r.stderr, what=args)
        assert r.returncode == 2, (args, r.stderr)
        COUNT["subprocess"] += 1
    assert not (tmp_path / "run").exists()


def test_zz_record():
    n = COUNT["in_process"] + COUNT["subprocess"]
    assert n > 0 and math.isfinite(n)
    record("hostile_recipes", recipes_tried=n, **COUNT)
