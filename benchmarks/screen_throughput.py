"""Rows per second of `traitwatch screen` per process, one process and N shards, and hours for 1M rows.

    .venv/bin/python benchmarks/screen_throughput.py --basis BASIS --data SET.jsonl [--rows 48] [--processes 2]
        [--threads 1] [--batch-size 16] [--dtype bfloat16] [--rank-by risk|loss|ratio] [--work-dir /tmp/screen_throughput]
        [--json OUT]

Each measurement runs in its own process (`--threads` torch threads each), the way `traitwatch screen --shard I/N`
runs: the model is loaded, then the shard is screened (`screen_shard`, reference "mean"), timed without the model
load. First one process screens the first `--rows` rows of DATA as shard 1/1; it also computes the one-off "mean"
reference (the model's own answers to the 115 measurement prompts, timed separately). Then `--processes` shards run
at once on the first `processes x rows` rows, each screening `rows` rows, with that reference copied in (the shards
share one reference; it is computed once per screen). Prints rows/s per process, the aggregate, and the estimated
hours for 1,000,000 rows at 1 and N processes (linear: rows / rate, plus the reference once), with the dtype, device,
threads and the machine's load average (other work on the machine slows every number down). `--rank-by loss` adds
the row's loss (the pass runs to the LM head); `--rank-by ratio` adds the reference ratio (two more passes per block,
`screen.reference_model`): its two adapters are fitted once by the one-process run (timed as `reference_model_s`)
and loaded by the shards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MILLION = 1_000_000


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from traitwatch.basis import TraitBasis
    from traitwatch.models import load_model
    from traitwatch.screen import screen_shard, shared_reference, shared_reference_screen
    from traitwatch.sharding import Shard

    t0 = time.perf_counter()
    basis = TraitBasis.load(spec["basis"])
    lm = load_model(basis.model.name, dtype=spec["dtype"], device=spec.get("device"))
    loaded = time.perf_counter() - t0
    with torch.no_grad():  # first-call kernel set-up, so that it is not counted in the first block
        lm.model(input_ids=torch.ones((spec["batch_size"], 128), dtype=torch.long, device=lm.model.device))
    reference_s = None
    if spec["reference"]:
        t = time.perf_counter()
        shared_reference(lm.model, lm.tokenizer, basis, spec["out"], batch_size=spec["batch_size"], model_name=lm.name)
        reference_s = time.perf_counter() - t
    ratio, ratio_s = None, None
    if spec.get("rank_by") == "ratio":
        t = time.perf_counter()
        ratio = shared_reference_screen(lm.model, lm.tokenizer, Path(spec["out"]).with_name("reference_model"))
        ratio_s = time.perf_counter() - t
    t = time.perf_counter()
    res = screen_shard(lm.model, lm.tokenizer, basis, spec["data"], out=spec["out"],
                       shard=Shard(spec["index"], spec["count"]), batch_size=spec["batch_size"],
                       max_examples=spec["max_examples"], model_name=lm.name, with_loss=spec.get("rank_by") == "loss",
                       ratio=ratio)
    seconds = time.perf_counter() - t
    return {"index": spec["index"], "count": spec["count"], "rows": len(res.rows), "seconds": seconds,
            "rows_per_s": len(res.rows) / seconds, "load_s": loaded, "reference_s": reference_s, "reference_model_s": ratio_s,
            "dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch."), "device": str(lm.model.device),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def launch(specs: list[dict]) -> list[dict]:
    """Start one process per spec at once; return their results."""
    env = {**os.environ, "OMP_NUM_THREADS": str(specs[0]["threads"]), "MKL_NUM_THREADS": str(specs[0]["threads"])}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(s)], env=env, stdout=subprocess.PIPE,
                              text=True) for s in specs]
    results = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a worker failed (exit {p.returncode})")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--basis", type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--rows", type=int, default=48, help="rows screened per process")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default=None)
    ap.add_argument("--rank-by", choices=("risk", "loss", "ratio"), default="risk",
                    help="loss also gives loss_peak and ratio ratio_peak: the same passes")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/screen_throughput"))
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--reference-file", type=Path, help="an R.reference.json of an earlier run with the same model, "
                    "basis, dtype and batch size: reused instead of computing (and timing) the reference again")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.basis is None or args.data is None:
        ap.error("--basis and --data are required")
    shutil.rmtree(args.work_dir, ignore_errors=True)
    common = {"basis": str(args.basis), "data": str(args.data), "threads": args.threads, "dtype": args.dtype,
              "device": args.device, "batch_size": args.batch_size, "rank_by": args.rank_by}
    one_out = args.work_dir / "one" / "r.jsonl"
    if args.reference_file:
        one_out.parent.mkdir(parents=True)
        shutil.copy(args.reference_file, one_out.with_name("r.reference.json"))
    (one,) = launch([{**common, "out": str(one_out), "index": 1, "count": 1, "max_examples": args.rows,
                      "reference": True}])
    if args.reference_file:  # read, not computed: its cost is not measured here
        one["reference_s"] = 0.0
    n = args.processes
    many_out = args.work_dir / "many" / "r.jsonl"
    many_out.parent.mkdir(parents=True)
    shutil.copy(one_out.with_name("r.reference.json"), many_out.with_name("r.reference.json"))
    if args.rank_by == "ratio":
        shutil.copytree(one_out.with_name("reference_model"), many_out.with_name("reference_model"))
    load = os.getloadavg()
    t = time.perf_counter()
    many = launch([{**common, "out": str(many_out), "index": i, "count": n, "max_examples": n * args.rows,
                    "reference": False} for i in range(1, n + 1)])
    wall = time.perf_counter() - t
    per_process = [r["rows_per_s"] for r in many]
    aggregate = sum(r["rows"] for r in many) / max(r["seconds"] for r in many)
    ref_h = one["reference_s"] / 3600
    summary = {
        "data": str(args.data), "basis": str(args.basis), "rank_by": args.rank_by, "dtype": one["dtype"], "device": one["device"],
        "reference_model_s": None if one["reference_model_s"] is None else round(one["reference_model_s"], 1),
        "threads_per_process": one["torch_threads"], "batch_size": args.batch_size, "torch": one["torch"],
        "cpu_count": os.cpu_count(), "loadavg_before_shards": [round(x, 2) for x in load],
        "reference_s": round(one["reference_s"], 1), "model_load_s": round(one["load_s"], 1),
        "one_process": {"rows": one["rows"], "seconds": round(one["seconds"], 1),
                        "rows_per_s": round(one["rows_per_s"], 3)},
        f"{n}_processes": {"rows_each": [r["rows"] for r in many], "seconds_each": [round(r["seconds"], 1) for r in many],
                           "rows_per_s_each": [round(x, 3) for x in per_process], "aggregate_rows_per_s":
                           round(aggregate, 3), "wall_s_with_model_load": round(wall, 1)},
        "hours_for_1M_rows": {"1_process": round(MILLION / one["rows_per_s"] / 3600 + ref_h, 1),
                              f"{n}_processes": round(MILLION / aggregate / 3600 + ref_h, 1)},
    }
    print(f"{args.data.name}: {one['dtype']} on {one['device']}, {one['torch_threads']} torch thread(s) per process, "
          f"batch {args.batch_size}, {os.cpu_count()} CPUs, load average {load[0]:.2f} before the shards")
    ref_text = "reused, not timed" if args.reference_file else f"{one['reference_s']:.1f} s"
    print(f"one-off 'mean' reference (115 prompts): {ref_text}; model load {one['load_s']:.1f} s; ranking by {args.rank_by}")
    if one["reference_model_s"] is not None:
        print(f"one-off reference adapters for the ratio (fitted on the probe pairs): {one['reference_model_s']:.1f} s")
    print(f"1 process : {one['rows']} rows in {one['seconds']:.1f} s = {one['rows_per_s']:.2f} rows/s")
    for r in many:
        print(f"shard {r['index']}/{n} : {r['rows']} rows in {r['seconds']:.1f} s = {r['rows_per_s']:.2f} rows/s")
    print(f"{n} processes: {aggregate:.2f} rows/s together ({aggregate / one['rows_per_s']:.2f}x one process)")
    for k, v in summary["hours_for_1M_rows"].items():
        print(f"1M rows, {k.replace('_', ' ')}: about {v:.1f} h")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
