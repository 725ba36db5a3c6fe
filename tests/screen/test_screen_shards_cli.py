"""`traitwatch screen --shard I/N`, under a launcher's environment, and `--merge`, in-process; bad input files."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import traitwatch.cli.screen_cmd as screen_cmd
from traitwatch.cli.app import app

runner = CliRunner()
FAST = ["--model", "tiny-random", "--dtype", "float32", "--max-new-tokens", "2", "--batch-size", "3"]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_shards_then_merge_give_the_unsharded_summary(basis_dir, chat_file, tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    common = [str(chat_file), "--basis", str(basis_dir), *FAST, "--top-k", "3"]
    one = invoke("screen", *common, "--out", str(tmp_path / "one.jsonl"), "--summary-json", str(tmp_path / "one.json"))
    assert one.exit_code == 0, one.output
    out = tmp_path / "r.jsonl"
    for i in (1, 2):
        res = invoke("screen", *common, "--out", str(out), "--shard", f"{i}/2", "--threads", "1")
        assert res.exit_code == 0, res.output
        assert f"Shard {i}/2" in res.stderr and "--merge" in res.stderr and not out.exists()
    early = tmp_path / "early.jsonl"  # a merge before the shards are done names what is missing
    invoke("screen", *common, "--out", str(early), "--shard", "1/2")
    bad = invoke("screen", *common, "--out", str(early), "--merge", "--filtered-out", str(tmp_path / "f.jsonl"))
    assert bad.exit_code == 2 and "shard 2/2 is missing" in bad.stderr and "4 rows" in bad.stderr
    assert not early.exists() and not (tmp_path / "f.jsonl").exists()

    def no_model(*a, **k):
        raise AssertionError("--merge must not load a model")

    monkeypatch.setattr(screen_cmd, "load_model", no_model)
    merged = invoke("screen", *common, "--out", str(out), "--merge", "--summary-json", str(tmp_path / "m.json"),
                    "--filtered-out", str(tmp_path / "clean.jsonl"))
    assert merged.exit_code == 0, merged.output
    assert "Merged 10 rows" in merged.stderr and "Top 3 riskiest" in merged.stdout
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "m.json").read_text())
    assert [t["line"] for t in a["top"]] == [t["line"] for t in b["top"]]
    assert b["risk"] == pytest.approx(a["risk"], abs=1e-6) and b["n_examples"] == 10
    assert len((tmp_path / "clean.jsonl").read_text().splitlines()) == 7
    other = invoke("screen", *common, "--out", str(out), "--merge", "--position", "last")
    assert other.exit_code == 2 and "position" in other.stderr


def test_shard_is_taken_from_the_launchers_environment(basis_dir, chat_file, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    out = tmp_path / "r.jsonl"
    res = invoke("screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "Shard 2/2 (cpu" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r.")) == [
        "r.reference.json", "r.reference.json.lock", "r.shard-2-of-2.jsonl"]
    assert len((tmp_path / "r.shard-2-of-2.jsonl").read_text().splitlines()) == 1 + 4


BAD_LINES = {
    "bad JSON": ('{"messages": [', "not valid JSON"),
    "no messages": ('{"prompt": "hi", "completion": "yo"}', 'expected an object with a "messages" list'),
    "no assistant turn": ('{"messages": [{"role": "user", "content": "hi"}]}', "the conversation has no assistant message"),
}


@pytest.mark.parametrize("mode", [[], ["--shard", "1/2"], ["--merge"]], ids=["plain", "shard", "merge"])
@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_bad_line_fails_before_the_model_loads_and_writes_nothing(basis_dir, tmp_path, monkeypatch, kind, mode):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data = tmp_path / "data" / "d.jsonl"
    data.parent.mkdir()
    data.write_text("\n".join([json.dumps(good), json.dumps(good), "", BAD_LINES[kind][0], json.dumps(good)]) + "\n")

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the file was checked")

    monkeypatch.setattr(screen_cmd, "load_model", no_model)
    monkeypatch.chdir(tmp_path)
    res = invoke("screen", str(data), "--basis", str(basis_dir), *FAST, "--out", str(tmp_path / "r.jsonl"),
                 "--filtered-out", str(tmp_path / "f.jsonl"), "--summary-json", str(tmp_path / "s.json"), *mode)
    assert res.exit_code == 2
    assert f"{data}, line 4: {BAD_LINES[kind][1]}" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["d.jsonl"]
