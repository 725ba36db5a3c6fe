"""A guard over the whole suite: traitwatch code never touches a run store's files outside SQLite.

Why: closing *any* descriptor of a file drops every POSIX lock the process holds on it, including those
of its live SQLite connections, after which another process deletes the WAL under the live writer and
its commits are lost (the store's header check once did exactly this). So no module of the package may
open a `.db` / `-wal` / `-shm` / `-journal` path with `open()`, `Path.open`, `os.open` or copy, move or
rename one with `shutil`/`os`, nor delete a `-wal`/`-shm`/`-journal`. A Python audit hook sees every such
call; one made from a frame inside the package fails at the call and again in the test's teardown
(in case the caller swallowed the error). Copies of a live store go through `Connection.backup` or
`VACUUM INTO`, which are SQLite's own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import traitwatch

PACKAGE = str(Path(traitwatch.__file__).resolve().parent) + os.sep
STORE_SUFFIXES = (".db", "-wal", "-shm", "-journal")
SIDE_FILES = ("-wal", "-shm", "-journal")
_EVENTS = {"open", "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move",
           "os.rename", "os.remove", "os.truncate"}

violations: list[str] = []


class StoreFileAccessError(RuntimeError):
    """Package code opened, copied, moved or deleted a store file outside SQLite."""


def _paths(event: str, args: tuple[object, ...]) -> list[str]:
    paths = []
    for arg in args[:2]:
        if isinstance(arg, (str, bytes, os.PathLike)):
            path = os.fsdecode(arg)
            suffixes = SIDE_FILES if event == "os.remove" else STORE_SUFFIXES
            if path.endswith(suffixes):
                paths.append(path)
    return paths


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event not in _EVENTS:
        return
    paths = _paths(event, args)
    if not paths:
        return
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(PACKAGE):
            message = (f"{filename}:{frame.f_lineno} touches the store file {paths[0]} outside SQLite ({event}); "
                       "only sqlite3 may open it (copy with Connection.backup or VACUUM INTO)")
            violations.append(message)
            raise StoreFileAccessError(message)
        frame = frame.f_back


sys.addaudithook(_hook)


@pytest.fixture(autouse=True)
def _no_store_file_access() -> Iterator[None]:
    before = len(violations)
    yield
    found = violations[before:]
    del violations[before:]
    assert not found, "\n".join(found)
