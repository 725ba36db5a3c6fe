"""Malformed-input generators and the property every input kind must keep (shared by the fuzz tests).

A case starts from a valid file of its kind and breaks it: byte-level (truncate, overwrite, insert, drop or
duplicate a line, random bytes, empty) or, for JSON/YAML kinds, structural (a field replaced by a random JSON
value of another type, a key removed). The property: the validator either accepts the result or raises a
`TraitwatchError` whose message is one line naming the file; nothing else escapes, and nothing is written
next to the input. Hypothesis shrinks a failing case to a small one and prints it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from traitwatch.errors import TraitwatchError

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def broken_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with one byte-level fault."""
    n = len(data)
    how = draw(st.sampled_from(["truncate", "overwrite", "insert", "drop_line", "dup_line", "random", "empty",
                                "binary_line", "deep_json"]))
    at = draw(st.integers(0, max(n - 1, 0)))
    if how == "truncate":
        return data[:at]
    if how == "overwrite":
        junk = draw(st.binary(min_size=1, max_size=16))
        return data[:at] + junk + data[at + len(junk):]
    if how == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    lines = data.splitlines(keepends=True) or [b""]
    i = draw(st.integers(0, len(lines) - 1))
    if how == "drop_line":
        return b"".join(lines[:i] + lines[i + 1:])
    if how == "dup_line":
        return b"".join(lines[: i + 1] + lines[i:])
    if how == "random":
        return draw(st.binary(max_size=256))
    if how == "binary_line":
        return b"".join([*lines[:i], b"\x00\xff\xfe" + draw(st.binary(max_size=8)) + b"\n", *lines[i:]])
    if how == "deep_json":
        depth = draw(st.sampled_from([50, 5000, 200_000]))
        return b"".join([*lines[:i], b"[" * depth + b"\n", *lines[i:]])
    return b""


@st.composite
def broken_jsonl(draw: st.DrawFn, data: bytes) -> bytes:
    """A JSONL file with a byte-level fault, or one line's JSON broken structurally."""
    if draw(st.booleans()):
        return draw(broken_bytes(data))
    lines = data.splitlines(keepends=True)
    i = draw(st.integers(0, len(lines) - 1))
    lines[i] = json.dumps(draw(broken_json(json.loads(lines[i])))).encode() + b"\n"
    return b"".join(lines)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def broken_json(draw: st.DrawFn, doc: Any) -> Any:
    """`doc` (parsed JSON) with one node replaced by a random value, or removed."""
    doc = json.loads(json.dumps(doc))
    paths = _paths(doc)
    path = draw(st.sampled_from(paths))
    value = draw(JSON_VALUES)
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    elif draw(st.booleans()) and isinstance(parent, list):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and mtime (stat only: a store file is never opened here)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            st_ = os.stat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), folder)] = (st_.st_size, st_.st_mtime_ns)
    return out


def verdict(validate: Callable[[Path], Any], path: Path, folder: Path) -> str | None:
    """None if `validate` accepts `path`; its one-line message if it refuses it. Fails the test otherwise."""
    before = snapshot(folder)
    try:
        validate(path)
        message = None
    except TraitwatchError as exc:
        message = str(exc)
        assert message and "\n" not in message, f"not one line: {message!r}"
        assert path.name in message or str(path) in message or path.parent.name in message, (
            f"the message does not name {path}: {message!r}")
        after = snapshot(folder)
        assert after == before, f"files changed next to a refused input: {set(after) ^ set(before) or 'contents'}"
    return message
