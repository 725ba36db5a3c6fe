"""Screening over several processes on tiny-random: shards merged equal one run, resume, refusals, env shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _screen_helpers import REF_PROMPTS

from traitwatch.errors import InputFileError
from traitwatch.screen import merge_shards, screen_dataset, screen_shard, shard_from_env, shard_path
from traitwatch.screen.shards import reference_path
from traitwatch.sharding import Shard

LINES = [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
KW = {"reference_prompts": REF_PROMPTS, "max_new_tokens": 4, "batch_size": 3}
SHARD_LINES = {1: LINES[0:3] + LINES[6:9], 2: LINES[3:6] + LINES[9:]}  # blocks 0, 2 and 1, 3 of three rows


class Interrupt(Exception):
    pass


def shard_run(tiny, basis, data, out, index, count=2, **kw):
    return screen_shard(tiny.model, tiny.tokenizer, basis, data, out=out, shard=Shard(index, count), **{**KW, **kw})


def assert_same_rows(a, b):
    assert [r.line for r in a] == [r.line for r in b]
    for x, y in zip(a, b, strict=True):
        assert np.allclose(x.drift, y.drift, rtol=0, atol=1e-6) and abs(x.risk - y.risk) <= 1e-6
        assert (x.n_tokens, x.truncated, x.reference_tokens) == (y.n_tokens, y.truncated, y.reference_tokens)


def test_blocks_are_dealt_round_robin_and_cover_everything_once():
    items = list(range(11))
    parts = [Shard(i, 3).select_blocks(items, 2) for i in (1, 2, 3)]
    assert parts[0] == [[0, 1], [6, 7]] and parts[2] == [[4, 5], [10]]
    assert sorted(x for p in parts for b in p for x in b) == items
    assert Shard(1, 1).select_blocks(items, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


@pytest.mark.parametrize("reference", ["mean", "self"])
def test_two_shards_merged_equal_one_unsharded_screen(tiny, basis, chat_file, tmp_path, reference):
    full = screen_dataset(tiny.model, tiny.tokenizer, basis, chat_file, out=tmp_path / "full.jsonl",
                          reference=reference, **KW)
    out = tmp_path / "r.jsonl"
    parts = {i: shard_run(tiny, basis, chat_file, out, i, reference=reference) for i in (2, 1)}
    for i, part in parts.items():
        assert [r.line for r in part.rows] == SHARD_LINES[i] and part.complete
        assert part.path == shard_path(out, Shard(i, 2)) == tmp_path / f"r.shard-{i}-of-2.jsonl"
        assert part.header["shard"] == {"index": i, "count": 2, "block": 3, "dtype": "float32"}
    assert reference_path(out).exists() == (reference == "mean")
    assert parts[1].header.get("reference_projection") == parts[2].header.get("reference_projection")

    merged = merge_shards(chat_file, out)
    assert_same_rows(merged.rows, full.rows)
    assert merged.header == full.header  # the unsharded header: same reference vector, no "shard"
    assert merged.complete and list(merged.lines) == LINES
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()[1:]] == LINES
    calls: list[int] = []  # the merged file is an ordinary results file: a plain screen finds it done
    again = screen_dataset(tiny.model, tiny.tokenizer, basis, chat_file, out=out, reference=reference,
                           progress=calls.append, **KW)
    assert calls == [10] and again.rows == merged.rows
    assert merge_shards(chat_file, out).rows == merged.rows  # merging again is idempotent


def test_interrupted_shard_resumes_to_the_uninterrupted_rows(tiny, basis, chat_file, tmp_path):
    whole = shard_run(tiny, basis, chat_file, tmp_path / "a.jsonl", 2)
    out = tmp_path / "r.jsonl"

    def stop(_n):
        raise Interrupt

    with pytest.raises(Interrupt):
        shard_run(tiny, basis, chat_file, out, 2, progress=stop)
    path = shard_path(out, Shard(2, 2))
    assert len(path.read_text().splitlines()) == 1 + 3  # header + its first block
    with path.open("a") as fh:
        fh.write('{"line": 10, "risk": 0.1, "dri')  # killed in the middle of a write
    shard_run(tiny, basis, chat_file, out, 1)
    with pytest.raises(InputFileError, match=r"shard 2/2 is incomplete: 1 of its 4 rows missing"):
        merge_shards(chat_file, out)
    assert not out.exists()
    calls: list[int] = []
    resumed = shard_run(tiny, basis, chat_file, out, 2, progress=calls.append)
    assert calls == [3, 1]
    assert_same_rows(resumed.rows, whole.rows)
    assert [r.line for r in merge_shards(chat_file, out).rows] == LINES


def test_merge_refuses_a_missing_shard_and_writes_nothing(tiny, basis, chat_file, tmp_path):
    out = tmp_path / "r.jsonl"
    with pytest.raises(InputFileError, match=r"No shard files r\.shard-I-of-N\.jsonl"):
        merge_shards(chat_file, out)
    shard_run(tiny, basis, chat_file, out, 1, count=3)
    shard_run(tiny, basis, chat_file, out, 3, count=3)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputFileError) as exc:
        merge_shards(chat_file, out)
    msg = str(exc.value)
    assert "shard 2/3 is missing (r.shard-2-of-3.jsonl not found; 3 rows)" in msg and "\n" not in msg
    assert "Nothing was written" in msg and sorted(p.name for p in tmp_path.iterdir()) == before
    shard_run(tiny, basis, chat_file, out, 1, count=2)  # a second split next to the first one
    with pytest.raises(InputFileError, match=r"2 different splits.*N = 2, 3"):
        merge_shards(chat_file, out)


def test_merge_refuses_shards_whose_headers_differ(tiny, basis, chat_file, tmp_path):
    out = tmp_path / "r.jsonl"
    shard_run(tiny, basis, chat_file, out, 1)
    shard_run(tiny, basis, chat_file, out, 2, risk_traits=["honesty"])
    with pytest.raises(InputFileError, match=r"Shards 1/2 and 2/2 are not one screen \('risk_traits' differs"):
        merge_shards(chat_file, out)
    assert not out.exists()

    second = shard_path(out, Shard(2, 2))  # the same settings, but another reference vector in the header
    second.unlink()
    shard_run(tiny, basis, chat_file, out, 2)
    lines = second.read_text().splitlines()
    header = json.loads(lines[0])
    header["reference_projection"][0] += 1e-3
    second.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    out.write_text("previous merge\n")
    with pytest.raises(InputFileError, match=r"'reference_projection' differs"):
        merge_shards(chat_file, out)
    assert out.read_text() == "previous merge\n"

    second.unlink()
    shard_run(tiny, basis, chat_file, out, 2)
    with pytest.raises(InputFileError, match=r"position = \"mean\", this command asks for \"last\""):
        merge_shards(chat_file, out, expect={"position": "last"})
    with pytest.raises(InputFileError, match=r"r\.jsonl: exists and is not a traitwatch screening results file"):
        merge_shards(chat_file, out)
    assert out.read_text() == "previous merge\n"


def test_shared_reference_of_another_screen_is_refused(tiny, basis, chat_file, tmp_path):
    out = tmp_path / "r.jsonl"
    shard_run(tiny, basis, chat_file, out, 1)
    with pytest.raises(InputFileError, match=r"r\.reference\.json: the shared reference of another screen "
                                             r"\('max_new_tokens' differs"):
        shard_run(tiny, basis, chat_file, out, 2, max_new_tokens=5)
    assert not shard_path(out, Shard(2, 2)).exists()


def test_shard_from_the_launchers_environment():
    assert shard_from_env({}) is None
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Shard(2, 2)
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: an ordinary screen
    assert shard_from_env({"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}) == Shard(4, 4)
    with pytest.raises(InputFileError, match="RANK='2' and WORLD_SIZE='2'"):
        shard_from_env({"RANK": "2", "WORLD_SIZE": "2"})
