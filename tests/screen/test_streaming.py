"""The screen reads its dataset as a stream: the blocks, the lines and the previews it streams are exactly those
of the whole list, for any block size, shard split and limit."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from traitwatch.datasets import arithmetic_chats, file_sha256
from traitwatch.screen import example_lines, previews, read_examples, shard_blocks, shard_lines
from traitwatch.sharding import Shard


def _write(path: Path, n: int, blanks: set[int]) -> Path:
    lines = [json.dumps(r) for r in arithmetic_chats(n, seed=3)]
    for i in sorted(blanks, reverse=True):
        lines.insert(min(i, len(lines)), "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(1, 23), block=st.integers(1, 6), count=st.integers(1, 4), data=st.data())
def test_streamed_blocks_and_lines_are_the_listed_ones(tmp_path_factory, n, block, count, data) -> None:
    path = _write(tmp_path_factory.mktemp("s") / "d.jsonl", n, set(data.draw(st.sets(st.integers(0, n), max_size=3))))
    limit = data.draw(st.none() | st.integers(1, n))
    examples = read_examples(path, limit=limit)
    lines, sha = example_lines(path, limit=limit)
    assert list(lines) == [e.line for e in examples] and sha == file_sha256(path)
    for index in range(1, count + 1):
        shard = Shard(index, count)
        listed = shard.select_blocks(examples, block)
        streamed = list(shard_blocks(path, block, shard, limit=limit))
        assert [[e.line for e in b] for b in streamed] == [[e.line for e in b] for b in listed]
        assert [e.messages for b in streamed for e in b] == [e.messages for b in listed for e in b]
        assert shard_lines(lines, block, shard) == [e.line for b in listed for e in b]
    wanted = {e.line for e in examples[::2]}
    assert previews(path, wanted) == {e.line: e.prompt_preview for e in examples if e.line in wanted}
