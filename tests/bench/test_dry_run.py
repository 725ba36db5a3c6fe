"""`--dry-run`: the reference study's arithmetic, checked against numbers worked out by hand."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from traitwatch.bench.grid.dry_run import dry_run, load_throughput, throughput_table
from traitwatch.bench.grid.plan_file import load_plan_file
from traitwatch.cli.app import app

DOCS = Path(__file__).resolve().parents[2] / "docs" / "calibrate-your-model.md"

# By hand, from METHOD.md 4-6:
#   runs: 4 models x 7 sets x 3 seeds = 84
#   steps per run: 1,000 examples / (4 per batch) = 250 batches; / 4 accumulation = 62.5 -> 63 updates per epoch;
#                  x 2 epochs = 126
#   trained checkpoints per run: steps 10, 20, ..., 120 (12) and the final 126 = 13; 84 x 13 = 1,092
#   judged evaluations: 1,092 + step 0 once per model and seed (4 x 3 = 12) = 1,104
#   judge calls: 1,104 x 72 questions x 1 sample x 2 prompts = 158,976 (157,248 for the trained checkpoints)
#   tokens trained <= 84 runs x 2 epochs x 1,000 examples x 512 = 86,016,000
#   tokens generated <= 1,104 x 72 x 600 = 47,692,800
#   H100 (989 TFLOPs bf16, 35% MFU, 4N FLOPs per LoRA token): training = 21 runs x 2,000 x 512 x 4 x N / (0.35 x 989e12)
#     per model: N = 8.03e9 1,995.4 s, 7.25e9 1,801.6 s, 7.62e9 1,893.5 s, 9.24e9 2,296.1 s -> 7,986.6 s = 2.2185 h
#   H100 generation: a decode step reads 2N bytes at 0.6 x 3.35 TB/s = 8.0 ms for 8B, under the 30 ms floor -> 30 ms;
#     72 answers in one batch x 600 steps = 18 s per evaluation; 1,104 x 18 s = 19,872 s = 5.52 h
HAND = {"runs": 84, "checkpoints": 1092, "judged_evaluations": 1104, "judge_calls": 158_976,
        "tokens_trained": 86_016_000, "tokens_generated": 47_692_800}


def test_reference_v2_counts_match_the_hand_computation():
    d = dry_run(load_plan_file("reference-v2", check_files=False))
    for key, value in HAND.items():
        assert d.total(key) == value, key
    m = d.models[0]
    assert (m.steps_per_run, m.checkpoints_per_run, m.base_evaluations) == (126, 13, 3)
    assert m.judge_calls - m.base_evaluations * 72 * 2 == 273 * 72 * 2
    hours = d.gpu_hours()["H100-80GB-SXM"]
    assert hours["train"] == pytest.approx(7986.6 / 3600, rel=1e-4)
    assert hours["generate"] == pytest.approx(5.52, rel=1e-9)
    assert hours["measure"] < 0.05 * hours["total"]  # drift and proxy forward passes: small next to the rest
    assert hours["total"] == pytest.approx(hours["train"] + hours["generate"] + hours["measure"])
    assert d.judge_usd() is not None and 100 < d.judge_usd() < 1000


def test_dry_run_prints_runs_checkpoints_judge_calls_and_gpu_hours_and_runs_nothing(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--plan", "reference-v2", "--dry-run", "--work-dir", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "Total: 84 runs (4 models x 7 sets x 3 seeds), 1,092 labelled checkpoints, 1,104 judged evaluations, " \
           "158,976 judge calls" in text
    assert "<= 86,016,000 tokens trained, <= 47,692,800 tokens generated" in text
    assert re.search(r"H100-80GB-SXM 7\.[0-9] \(2\.2 \+ 5\.5 \+", text)
    assert "gsm8k:" in text and "fill them in" in text  # the sets to fill in are named
    assert not (tmp_path / "w").exists()
    one = CliRunner().invoke(app, ["bench", "--plan", "reference-v2", "--model", "gemma-2-9b", "--dry-run"])
    assert "Total: 21 runs (1 model x 7 sets x 3 seeds)" in " ".join(one.output.split())


def test_a_step_budget_counts_steps_times_the_effective_batch():
    m = dry_run(load_plan_file("small-cpu-full")).models[0]
    assert (m.labelled_runs, m.twin_runs, m.steps_per_run, m.checkpoints_per_run) == (42, 24, 30, 2)
    assert m.tokens_trained == 66 * 30 * 4 * 128 and m.judge_calls == 0
    m = dry_run(load_plan_file("small-cpu")).models[0]
    assert (m.labelled_runs, m.twin_runs, m.steps_per_run, m.checkpoints_per_run) == (33, 0, 30, 1)
    assert m.tokens_trained == 33 * 30 * 4 * 128


def test_the_docs_table_is_the_throughput_file():
    """docs/calibrate-your-model.md prints the derived throughput for an 8B model: it must be what the dry run uses."""
    text = DOCS.read_text()
    table = load_throughput()
    for gpu, rates in throughput_table(8.0e9).items():
        spec = table["gpus"][gpu]
        row = next((line for line in text.splitlines() if line.startswith(f"| {gpu} |")), None)
        assert row is not None, gpu
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:5] == [f"{spec['bf16_tflops']:g}", f"{spec['hbm_tb_s']:g}", f"{rates['train_tokens_per_s']:,.0f}",
                              f"{rates['decode_steps_per_s']:.1f}"], row
    assert math.isclose(table["assumptions"]["training_mfu"], 0.35)
