"""Memory and time of checking a large chat JSONL up front (issue 30): the streaming validator against reading
every row into memory.

Writes a chat set of N rows (default 1,000,000 arithmetic conversations, about 150 bytes each), then, each in a
fresh process so peak RSS is its own: `check_chat_jsonl` (one streaming pass, what every command runs first),
and `load_chat_jsonl` (every conversation held in memory, what training then needs). Prints rows/s and peak
RSS (and how far above the interpreter's own), and the two side by side. Then screens the first 20,000 and
80,000 rows with the tiny random model (the screen's own memory: what it holds per row, the conversations are
streamed), each in a fresh process.

    .venv/bin/python benchmarks/input_scale.py [--rows 1000000] [--dir /tmp/input_scale]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

_CHILD = """
import json, resource, sys, time
import traitwatch.datasets as d
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
result = getattr(d, sys.argv[1])(sys.argv[2])
elapsed = time.perf_counter() - t0
n = result.n_rows if hasattr(result, "n_rows") else len(result)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": n, "seconds": elapsed, "peak_rss_mib": peak / 1024, "above_baseline_mib": (peak - base) / 1024}))
"""


_SCREEN = """
import json, resource, sys, time
import torch
from dataclasses import replace
from traitwatch.basis import TraitSet, extract_basis, load_traits
from traitwatch.drift import DriftProbe
from traitwatch.models import load_model
from traitwatch.screen import screen_dataset
torch.set_num_threads(1)
tiny = load_model("tiny-random", device="cpu", dtype="float32")
full = load_traits()
traits = TraitSet(tuple(replace(t, positive_passages=t.positive_passages[:2], negative_passages=t.negative_passages[:2])
                        for t in full.traits), full.questions[:4], full.contexts[:4], "small")
basis = extract_basis(tiny.model, tiny.tokenizer, traits, layers=[3], method="passages")
basis.layer = 3
basis.anchor = DriftProbe(basis).fit_anchor(tiny.model, tiny.tokenizer).anchor_
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
res = screen_dataset(tiny.model, tiny.tokenizer, basis, sys.argv[1], out=sys.argv[2], reference_prompts=["Hello."],
                     max_examples=int(sys.argv[3]), batch_size=64, max_new_tokens=4, max_response_tokens=64)
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": len(res.rows), "seconds": elapsed, "peak_rss_mib": peak / 1024,
                  "above_baseline_mib": (peak - base) / 1024}))
"""


def _screen(path: Path, out_dir: Path, rows: int) -> dict:
    out = out_dir / f"screen-{rows}.jsonl"
    out.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", _SCREEN, str(path), str(out), str(rows)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/input_scale"))
    parser.add_argument("--screen-rows", type=int, nargs="*", default=[20_000, 80_000],
                        help="also screen the first N rows with the tiny random model (peak RSS per N)")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"chat-{args.rows}.jsonl"
    if not path.is_file():
        from traitwatch.datasets import arithmetic_chats

        rows = [json.dumps(r) + "\n" for r in arithmetic_chats(1000, seed=0)]
        with path.open("w", encoding="utf-8") as fh:
            for i in range(args.rows):
                fh.write(rows[i % len(rows)])
    print(f"{path}: {args.rows} rows, {path.stat().st_size / 2**20:.0f} MiB (python {sys.version.split()[0]})")
    results = {}
    for fn in ("check_chat_jsonl", "load_chat_jsonl"):
        out = subprocess.run([sys.executable, "-c", _CHILD, fn, str(path)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results[fn] = r
        print(f"{fn:17s} {r['rows']} rows in {r['seconds']:.1f} s ({r['rows'] / r['seconds']:,.0f} rows/s); peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB, {r['above_baseline_mib']:.0f} MiB above the interpreter's")
    for rows in args.screen_rows:
        r = _screen(path, args.dir, rows)
        print(f"screen (tiny-random, streamed) {r['rows']} of the rows in {r['seconds']:.0f} s "
              f"({r['rows'] / r['seconds']:,.0f} rows/s); peak RSS {r['peak_rss_mib']:.0f} MiB, "
              f"{r['above_baseline_mib']:.0f} MiB above the model and basis")
    check, load = results["check_chat_jsonl"], results["load_chat_jsonl"]
    print(f"peak RSS, check / load: {check['peak_rss_mib']:.0f} / {load['peak_rss_mib']:.0f} MiB; "
          f"time, check / load: {check['seconds'] / load['seconds']:.2f}")


if __name__ == "__main__":
    main()
