"""Screening a large dataset over several processes: `traitwatch screen --shard I/N`, `torchrun`, `--merge`.

**Split.** A screen works in fixed blocks of `batch_size` consecutive examples; shard I of N screens
blocks I-1, I-1+N, I-1+2N, ... (`Shard.select_blocks`), so every row is computed in exactly the batch
an unsharded screen puts it in and has the same numbers, and the split does not depend on how many
rows there are. Each shard writes its own resumable results file next to `--out`
(`RESULTS.shard-I-of-N.jsonl`), whose header is the unsharded header plus
`"shard": {index, count, block, dtype}`. Under `torchrun` / `accelerate launch` (without `--shard`) the
shard is RANK+1 of WORLD_SIZE (`shard_from_env`); no process group is needed: the shards never talk.

**Reference.** The `"mean"` reference (the model's own answers to the measurement prompts) is computed
once, by whichever shard gets there first, under an exclusive lock (`RESULTS.reference.json.lock`), and
written to `RESULTS.reference.json`; the other shards wait on the lock and read it, so every shard's
header carries the same vector. The file records the model, basis, dtype and settings it was computed
for and is refused by a screen with other ones. (On one machine or a file system with working `flock`.)

**Merge.** `merge_shards` reads every shard file (read-only: a shard still running is not disturbed),
checks that their headers agree (the same screen: dataset content, model, basis, reference vector,
scale, settings, block size, dtype), that each shard holds exactly its own rows and all of them, and
only then writes the one results file at `--out` (temporary file + `os.replace`), the same file an
unsharded screen writes, so `traitwatch screen` on it resumes with nothing to do. A missing or
incomplete shard, or a header that differs, is an error naming the shard(s) and writes nothing.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from traitwatch.basis.basis import TraitBasis
from traitwatch.basis.traits import load_measurement_prompts, prompts_hash
from traitwatch.drift.probe import DriftProbe
from traitwatch.errors import InputFileError
from traitwatch.models.layers import fingerprint
from traitwatch.screen.activations import SpanPosition
from traitwatch.screen.examples import example_lines, shard_lines
from traitwatch.screen.reference_model import ReferenceScreen
from traitwatch.screen.results import FORMAT, Row, read_results
from traitwatch.screen.screen import Reference, ReferenceKind, ScreenResults, mean_reference, screen_dataset
from traitwatch.sharding import Shard

__all__ = [
    "Shard",
    "merge_shards",
    "reference_path",
    "reference_screen_path",
    "screen_shard",
    "shard_device",
    "shard_from_env",
    "shard_path",
    "shared_reference",
    "shared_reference_screen",
]

REFERENCE_FORMAT = "traitwatch.screen.reference"


def shard_path(out: str | Path, shard: Shard) -> Path:
    """`RESULTS.shard-I-of-N.jsonl` next to `RESULTS.jsonl`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard-{shard.name}{out.suffix}")


def reference_path(out: str | Path) -> Path:
    """`RESULTS.reference.json`: the shards' one `"mean"` reference."""
    out = Path(out)
    return out.with_name(f"{out.stem}.reference.json")


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard a launcher gives this process: RANK/WORLD_SIZE (`torchrun`, `accelerate launch`), else
    LOCAL_RANK/LOCAL_WORLD_SIZE; None without them or with one process."""
    env = os.environ if environ is None else environ
    for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("LOCAL_RANK", "LOCAL_WORLD_SIZE")):
        if rank_key in env and size_key in env:
            try:
                rank, size = int(env[rank_key]), int(env[size_key])
            except ValueError:
                rank, size = -1, 0
            if not 0 <= rank < size:
                raise InputFileError(f"The launcher's {rank_key}={env[rank_key]!r} and {size_key}={env[size_key]!r} "
                                     "are not a rank of a world size; pass --shard I/N instead.")
            return Shard(rank + 1, size) if size > 1 else None
    return None


def shard_device(environ: Mapping[str, str] | None = None) -> str | None:
    """`cuda:LOCAL_RANK` under a launcher when CUDA is present (one device per process), else None."""
    env = os.environ if environ is None else environ
    local = env.get("LOCAL_RANK")
    if local is None or not local.strip().isdigit():
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return f"cuda:{int(local) % torch.cuda.device_count()}"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _write_atomic(path: Path, parts: Iterable[str]) -> None:
    """Write to a temporary file next to `path` (per process), fsync, then `os.replace` it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(parts)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def shared_reference(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    basis: TraitBasis,
    out: str | Path,
    *,
    layer: int | None = None,
    position: SpanPosition = "mean",
    max_new_tokens: int = 64,
    batch_size: int = 16,
    prompts: Sequence[str] | None = None,
    model_name: str | None = None,
    on_reference: Callable[[int], Callable[[int], None] | None] | None = None,
) -> Reference:
    """The `"mean"` reference of the screen writing to `out`, computed once for all its shards.

    Under an exclusive lock: read `RESULTS.reference.json` if it exists (refused if it was computed for
    another model, basis, dtype or settings), else compute it (`mean_reference`, with the progress callback
    `on_reference(n_prompts)` returns) and write it.
    """
    probe = DriftProbe(basis, layer=layer)
    at_layer = probe.measure_layer
    texts = [p for _, p in load_measurement_prompts()] if prompts is None else list(prompts)
    key = {
        "model": fingerprint(model, tokenizer, model_name).to_dict(),
        "basis": probe.fingerprint(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "layer": at_layer,
        "position": position,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "prompts": {"n": len(texts), "hash": prompts_hash("screen-reference", texts)},
    }
    key = json.loads(json.dumps(key))
    path = reference_path(out)
    with _locked(path.with_name(path.name + ".lock")):
        if path.exists():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                stored = None
            if not isinstance(stored, dict) or stored.get("format") != REFERENCE_FORMAT:
                raise InputFileError(f"{path}: not a traitwatch screening reference; delete it or pass another --out")
            for k, v in key.items():
                if stored["key"].get(k) != v:
                    raise InputFileError(
                        f"{path}: the shared reference of another screen ({k!r} differs: {_short(stored['key'].get(k))} "
                        f"in the file, {_short(v)} now); delete it to compute a new one, or pass another --out"
                    )
            return Reference(np.asarray(stored["projection"], dtype=np.float64), int(stored["n_prompts"]),
                             str(stored["prompts_hash"]), int(stored["max_new_tokens"]), stored["position"],
                             int(stored["layer"]))
        ref = mean_reference(model, tokenizer, basis, layer=at_layer, position=position, prompts=texts,
                             max_new_tokens=max_new_tokens, batch_size=batch_size,
                             progress=on_reference(len(texts)) if on_reference is not None else None)
        _write_atomic(path, [json.dumps({
            "format": REFERENCE_FORMAT, "key": key, "projection": [float(x) for x in ref.projection],
            "n_prompts": ref.n_prompts, "prompts_hash": ref.prompts_hash, "max_new_tokens": ref.max_new_tokens,
            "position": ref.position, "layer": ref.layer,
        }, allow_nan=False) + "\n"])
        return ref


def reference_screen_path(out: str | Path) -> Path:
    """Where the screen writing to `out` keeps its fitted reference screen: `RESULTS.reference_model/`."""
    out = Path(out)
    return out.with_name(out.stem + ".reference_model")


def shared_reference_screen(model: nn.Module, tokenizer: PreTrainedTokenizerBase, folder: str | Path, *,
                            kind: str = "adapters") -> ReferenceScreen:
    """The reference screen saved in `folder`, or fitted now and saved there: one fit for every shard and every
    rerun (under an exclusive lock, like the shared `"mean"` reference)."""
    folder = Path(folder)
    with _locked(folder.with_name(folder.name + ".lock")):
        if (folder / "reference_screen.json").is_file():
            return ReferenceScreen.load(folder, model, tokenizer)
        screen = ReferenceScreen(kind).fit(model, tokenizer)  # type: ignore[arg-type]
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        screen.save(tmp)
        os.replace(tmp, folder)
        return screen


def screen_shard(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    basis: TraitBasis,
    dataset: str | Path,
    *,
    out: str | Path,
    shard: Shard,
    reference: ReferenceKind | Reference = "mean",
    position: SpanPosition = "mean",
    layer: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    reference_prompts: Sequence[str] | None = None,
    model_name: str | None = None,
    on_reference: Callable[[int], Callable[[int], None] | None] | None = None,
    **kwargs: Any,
) -> ScreenResults:
    """Screen shard `shard` of `dataset` into `shard_path(out, shard)` (resumable, like `screen_dataset`,
    whose other keyword arguments pass through); with `reference="mean"` the shards share one reference."""

    def shared() -> Reference:  # called by screen_dataset only when the shard's file is new
        return shared_reference(
            model, tokenizer, basis, out, layer=layer, position=position, max_new_tokens=max_new_tokens,
            batch_size=batch_size, prompts=reference_prompts, model_name=model_name, on_reference=on_reference,
        )

    ref = shared if isinstance(reference, str) and reference == "mean" else reference
    return screen_dataset(
        model, tokenizer, basis, dataset, out=shard_path(out, shard), reference=ref, position=position,
        layer=layer, batch_size=batch_size, max_new_tokens=max_new_tokens, reference_prompts=reference_prompts,
        model_name=model_name, shard=shard, **kwargs,
    )


def _read_shard_file(path: Path) -> tuple[dict[str, Any], dict[int, Row]]:
    """Header and rows of a shard's results file, read only (`results.read_results`)."""
    header, rows = read_results(path, not_results="move it away and merge again",
                                corrupt="delete the file and rerun that shard")
    if not isinstance(header.get("shard"), dict):
        raise InputFileError(f"{path}: not a shard of a traitwatch screen; move it away and merge again")
    return header, rows


def merge_shards(
    dataset: str | Path,
    out: str | Path,
    *,
    max_examples: int | None = None,
    expect: Mapping[str, Any] | None = None,
) -> ScreenResults:
    """Merge the shard files next to `out` into `out`; returns the merged results.

    Every shard file `RESULTS.shard-I-of-N.jsonl` of one N must be there, complete for the examples of
    `dataset` (its first `max_examples`), hold only its own rows, and agree with the others' headers and
    with `expect` (header values the caller knows, e.g. position and risk traits); otherwise an
    `InputFileError` names the shards and what is wrong, and nothing is written. The merged file is the
    header without `"shard"` and every row in line order, written atomically.
    """
    dataset, out = Path(dataset), Path(out)
    lines, dataset_sha = example_lines(dataset, limit=max_examples)  # validates the file; errors name the line
    name = re.compile(re.escape(out.stem) + r"\.shard-([1-9][0-9]*)-of-([1-9][0-9]*)" + re.escape(out.suffix))
    found: dict[tuple[int, int], Path] = {}
    for p in out.parent.iterdir() if out.parent.is_dir() else ():
        if (m := name.fullmatch(p.name)) and int(m[1]) <= int(m[2]):
            found[(int(m[1]), int(m[2]))] = p
    pattern = f"{out.stem}.shard-I-of-N{out.suffix}"
    if not found:
        raise InputFileError(f"No shard files {pattern} next to {out}; run `traitwatch screen ... --shard I/N` for "
                             "every I first (or under torchrun), then --merge")
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        raise InputFileError(f"Shard files of {len(counts)} different splits next to {out} (N = "
                             f"{', '.join(map(str, counts))}): delete those of the split you abandoned, then --merge")
    n = counts[0]
    files = {i: found[(i, n)] for i in range(1, n + 1) if (i, n) in found}
    read = {i: _read_shard_file(p) for i, p in files.items()}

    first = min(read)
    header0 = read[first][0]
    for i, (header, _) in read.items():
        meta = header["shard"]
        if (meta.get("index"), meta.get("count")) != (i, n):
            raise InputFileError(f"{files[i]}: its header says shard {meta.get('index')}/{meta.get('count')}, its name "
                                 f"{i}/{n}; it was renamed: move it away and rerun shard {i}/{n}")
        shared = {k: v for k, v in header.items() if k != "shard"}
        shared0 = {k: v for k, v in header0.items() if k != "shard"}
        ours = {**shared, "shard": {k: v for k, v in meta.items() if k != "index"}}
        theirs = {**shared0, "shard": {k: v for k, v in header0["shard"].items() if k != "index"}}
        for key in dict.fromkeys([*theirs, *ours]):
            if ours.get(key) != theirs.get(key):
                raise InputFileError(
                    f"Shards {first}/{n} and {i}/{n} are not one screen ({key!r} differs: {_short(theirs.get(key))} in "
                    f"{files[first].name}, {_short(ours.get(key))} in {files[i].name}); nothing merged: delete the odd "
                    "shard's file and rerun it with the others' settings"
                )
    if header0.get("dataset_sha256") != dataset_sha:
        raise InputFileError(f"The shards next to {out} screened another version of {dataset} (its content changed); "
                             "nothing merged: rerun the shards on this file")
    for key, value in (expect or {}).items():
        value = json.loads(json.dumps(value))
        if header0.get(key) != value:
            raise InputFileError(f"The shards next to {out} were screened with {key} = {_short(header0.get(key))}, this "
                                 f"command asks for {_short(value)}; nothing merged: pass the shards' options to --merge")

    block = int(header0["shard"]["block"])
    expected = {i: shard_lines(lines, block, Shard(i, n)) for i in range(1, n + 1)}
    owner = {line: i for i, lines in expected.items() for line in lines}
    problems = []
    for i in range(1, n + 1):
        name = shard_path(out, Shard(i, n)).name
        if i not in read:
            problems.append(f"shard {i}/{n} is missing ({name} not found; {len(expected[i])} rows)")
            continue
        rows = read[i][1]
        missing = sum(line not in rows for line in expected[i])
        foreign = sorted(line for line in rows if owner.get(line, i) != i)
        if foreign:
            problems.append(f"shard {i}/{n} ({name}) holds {len(foreign)} rows of other shards (lines "
                            f"{', '.join(map(str, foreign[:5]))}{', ...' if len(foreign) > 5 else ''})")
        if missing:
            problems.append(f"shard {i}/{n} is incomplete: {missing} of its {len(expected[i])} rows missing ({name})")
    if problems:
        raise InputFileError(f"Cannot merge into {out}: {'; '.join(problems)}. Nothing was written; run or finish those "
                             "shards (the same command with --shard I/N resumes), then --merge again")

    header = {k: v for k, v in header0.items() if k != "shard"}
    if out.exists() and out.stat().st_size > 0:
        with out.open("rb") as fh:
            head = fh.readline()
        try:
            existing = json.loads(head)
        except (json.JSONDecodeError, UnicodeDecodeError):
            existing = None
        if not isinstance(existing, dict) or existing.get("format") != FORMAT:
            raise InputFileError(f"{out}: exists and is not a traitwatch screening results file; pass another --out")
        differs = next((k for k in dict.fromkeys([*header, *existing]) if header.get(k) != existing.get(k)), None)
        if differs is not None:
            raise InputFileError(f"{out}: holds results of another screen ({differs!r} differs from the shards'); "
                                 "nothing merged: delete it or merge into another --out")
    trait_names = list(header["trait_names"])
    rows_by_line = {line: read[i][1][line] for line, i in owner.items()}
    ordered = [rows_by_line[line] for line in lines]
    _write_atomic(out, itertools.chain([json.dumps(header, allow_nan=False) + "\n"],
                                       (json.dumps(r.to_json(trait_names), allow_nan=False) + "\n" for r in ordered)))
    return ScreenResults(out, header, trait_names, ordered, lines, dataset)
