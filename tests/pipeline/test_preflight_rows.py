"""The preflight's row pass and model notes beyond refusals: the record of checked rows in the run directory, the
streamed check cut into parallel byte ranges, a tokenizer without a chat template."""
import pytest
import yaml

from preflight_inputs import ROW, jsonl, model_dir, recipe


def test_a_tokenizer_without_a_chat_template_is_noted_not_refused(tmp_path, monkeypatch, capsys):
    """bootstrap installs the pipeline's own three-mode template on any model: none is needed."""
    from pipeline.cli import main

    d = model_dir(tmp_path, template=False)
    rf = tmp_path / "r.yaml"
    rf.write_text(yaml.safe_dump(recipe(tmp_path, model={"path": str(d)})))
    rc = main(["validate", str(rf), "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3 safetensors" not in out and "shapes agree with config.json" in out
    assert "no chat template: none needed, bootstrap installs the pipeline's three-mode template" in out
    for part in ("recipe", "model", "checks", "weights", "rows", "sandbox", "engine", "packages", "run dir"):
        assert f"  {part} " in out, part


def test_row_checks_are_recorded_by_content_and_not_repeated(tmp_path):
    from pipeline.preflight import CACHE, preflight

    f = jsonl(tmp_path / "d.jsonl", [ROW] * 6)
    rf = tmp_path / "r.yaml"
    rf.write_text(yaml.safe_dump(recipe(tmp_path, f)))
    run_dir = tmp_path / "run"

    def rows_part(**kw):
        rep = preflight(str(rf), run_dir=run_dir, **kw)[2]
        return next(w for n, _, w in rep.parts if n == "rows")

    assert rows_part() == "2 source split(s), 8 rows checked" and not (run_dir / CACHE).exists()  # validate: no write
    assert rows_part(write_cache=True) == "2 source split(s), 8 rows checked"      # train (6 rows) and eval (2)
    assert (run_dir / CACHE).exists()
    assert rows_part() == "2 unchanged since the last run's preflight (.preflight.json)"
    jsonl(f, [ROW] * 5 + [{"messages": ROW["messages"]}])       # new content: read again, and refused
    with pytest.raises(ValueError, match="row 5: answer: missing"):
        rows_part()


def test_a_large_file_is_checked_in_parallel_with_the_same_answers(tmp_path):
    """The streamed check cut into byte ranges (one process each) finds the same first bad row and counts."""
    from pipeline.preflight_rows import Read, stream

    rows = [dict(ROW, answer=str(i)) for i in range(300)]
    rows[40] = {"messages": ROW["messages"]}                          # in the first range
    rows[250] = {**ROW, "answer": [1]}                                # in the last one
    f = jsonl(tmp_path / "d.jsonl", rows)
    with open(f, "a") as fh:
        fh.write("\n\n")                                             # blank lines do not count as rows

    def run(split, workers, n=1000):
        src = {"source": "json", "data_files": str(f), "train_split": split, "fields": {}, "format": "auto"}
        try:
            return stream(Read("math", src, "train", n=n, sft_modes={"non_think"}), workers=workers)
        except ValueError as e:
            return str(e)

    for split, n in (("train", 1000), ("train[41:]", 1000), ("train[41:250]", 1000), ("train[-10:]", 5),
                     ("train[45:]", 100)):
        one = run(split, 1, n)
        assert all(run(split, w, n) == one for w in (2, 3, 7)), split
    assert run("train", 3) == f"tasks.math: json:{f} row 40: answer: missing"
    assert run("train[41:]", 3) == f"tasks.math: json:{f} row 250: answer: expected a string or a number, got list"
    assert run("train[41:250]", 3) == 209 and run("train[-10:]", 3, 5) == 5 and run("train[45:]", 2, 100) == 100


def test_the_disk_estimate_leaves_out_what_is_built_already(tmp_path):
    """A stage complete with this config has its outputs on the disk already: it is not counted again."""
    import json

    from pipeline.graph import config_hash
    from pipeline.preflight import estimate_bytes
    from pipeline.recipe import load_with_graph

    rf = tmp_path / "r.yaml"
    rf.write_text(yaml.safe_dump(recipe(tmp_path)))
    rec, graph = load_with_graph(rf, check=False)
    run = tmp_path / "run"
    need, models = estimate_bytes(rec, graph, run)
    assert models == 3 and need > 0                  # bootstrap, sft.math, grpo.math.non_think
    sft = next(s for s in graph if s.id == "sft.math")
    (run / "sft.math").mkdir(parents=True)
    (run / "sft.math" / "manifest.json").write_text(json.dumps({"status": "complete", "config_hash": "other"}))
    assert estimate_bytes(rec, graph, run) == (need, 3)                 # another config: built again
    (run / "sft.math" / "manifest.json").write_text(json.dumps({"status": "complete",
                                                                "config_hash": config_hash(sft)}))
    less, n = estimate_bytes(rec, graph, run)
    assert n == 2 and 0 < less < need
