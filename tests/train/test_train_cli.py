"""`traitwatch train` end to end on tiny-random: table, store record, resume, one-line errors."""

from __future__ import annotations

import json

import pytest
from _train_helpers import conversations, write_jsonl
from typer.testing import CliRunner

from traitwatch.cli.app import app
from traitwatch.models import build_tiny_random
from traitwatch.store import RunStore
from traitwatch.train import file_sha256

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def train_args(data, basis_dir, tmp_path, *extra):
    return ["train", data, "--basis", basis_dir, "--model", "tiny-random", "--output-dir", tmp_path / "out",
            "--store", tmp_path / "tw.db", "--max-steps", "4", "--every", "2", "--batch-size", "2",
            "--grad-accum", "1", "--lr", "1e-2", "--max-length", "48", "--device", "cpu", "--dtype", "float32",
            *extra]


def test_train_prints_drift_records_run_and_resumes(basis_dir, chat_file, tmp_path):
    res = invoke(*train_args(chat_file, basis_dir, tmp_path, "--n-samples", "30", "--seed", "7"))
    assert res.exit_code == 0, res.output
    assert "honesty" in res.stdout and "||d||" in res.stdout
    assert "30 of 30 conversations used" in res.output and "longer than 48 tokens: truncated" in res.output
    with RunStore(tmp_path / "tw.db") as store:
        run = store.get_run("out")
        first = store.measurements("out")
    assert [m.step for m in first] == [0, 2, 4]
    assert run.model == "tiny-random" and run.seed == 7 and run.dataset == str(chat_file.resolve())
    hp = run.hyperparameters
    assert hp["dataset_sha256"] == file_sha256(chat_file) and hp["n_samples"] == 30
    assert (hp["lora_r"], hp["lora_alpha"], hp["lora_dropout"], hp["target_modules"]) == (16, 64, 0.05, ["q_proj", "v_proj"])
    assert hp["effective_batch"] == 2 and run.basis_fingerprint["trait_names"][0] == "honesty"
    assert (tmp_path / "out" / "checkpoint-4" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "out" / "traitwatch_run.json").read_text())["run_id"] == "out"

    # the same command again resumes the finished run instead of starting a second trajectory
    res = invoke(*train_args(chat_file, basis_dir, tmp_path, "--n-samples", "30", "--seed", "7"))
    assert res.exit_code == 0, res.output
    assert "Resuming run 'out' from" in res.output and "checkpoint-4" in res.output
    with RunStore(tmp_path / "tw.db") as store:
        again = store.measurements("out")
        assert len(store.runs()) == 1
    assert [(m.step, m.created_at) for m in again] == [(m.step, m.created_at) for m in first]


def test_full_finetuning_with_response_only(basis_dir, chat_file, tmp_path):
    res = invoke(*train_args(chat_file, basis_dir, tmp_path, "--full", "--response-only", "--run-id", "full1"))
    assert res.exit_code == 0, res.output
    with RunStore(tmp_path / "tw.db") as store:
        run = store.get_run("full1")
        ms = store.measurements("full1")
    assert run.hyperparameters["method"] == "full" and run.hyperparameters["response_only"] is True
    assert [m.step for m in ms] == [0, 2, 4] and ms[-1].drift_norm > 0
    assert (tmp_path / "out" / "final" / "config.json").is_file()  # a full model, not an adapter


@pytest.fixture(scope="module")
def other_model_basis(tmp_path_factory, small_traits):
    from traitwatch.basis import extract_basis

    model, tok = build_tiny_random(hidden_size=32)
    basis = extract_basis(model, tok, small_traits, layers=[2], method="passages")
    return basis.save(tmp_path_factory.mktemp("other") / "basis")


@pytest.mark.parametrize(
    "case, message",
    [
        ("malformed", "bad.jsonl, line 2: not valid JSON"),
        ("empty", "the dataset is empty"),
        ("other_basis", "hidden size 32"),
        ("bad_target", "LoRA targets ['nope_proj'] do not fit this model"),
        ("foreign_checkpoints", "holds checkpoints of run 'someone-else'"),
        ("missing_basis", "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, message, basis_dir, chat_file, tmp_path, request):
    data, basis, extra = chat_file, basis_dir, []
    if case == "malformed":
        data = tmp_path / "bad.jsonl"
        data.write_text(json.dumps({"messages": conversations(1)[0]}) + "\n{oops\n")
    elif case == "empty":
        data = write_jsonl(tmp_path / "empty.jsonl", [])
    elif case == "other_basis":
        basis = request.getfixturevalue("other_model_basis")
    elif case == "bad_target":
        extra = ["--targets", "nope_proj"]
    elif case == "foreign_checkpoints":
        (tmp_path / "out" / "checkpoint-3").mkdir(parents=True)
        (tmp_path / "out" / "traitwatch_run.json").write_text(json.dumps({"run_id": "someone-else"}))
    elif case == "missing_basis":
        basis = tmp_path / "nope"
    res = invoke(*train_args(data, basis, tmp_path, *extra))
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and message in " ".join(lines), res.output
    assert "Traceback" not in res.output


def test_bad_alarm_action_is_rejected(basis_dir, chat_file, tmp_path):
    res = runner.invoke(app, [str(a) for a in train_args(chat_file, basis_dir, tmp_path, "--on-alarm", "warn,explode")])
    assert res.exit_code == 2 and "explode" in res.output


def test_train_with_a_guard_fits_it_on_the_base_and_stores_what_it_did(basis_dir, chat_file, tmp_path):
    res = invoke(*train_args(chat_file, basis_dir, tmp_path, "--guard", "steer", "--guard-strength", "0.5"))
    assert res.exit_code == 0, res.output
    assert "Guard: steering by 0.5 x the probe's misaligned-minus-aligned gap at layer" in res.output
    with RunStore(tmp_path / "tw.db") as store:
        run, ms = store.get_run("out"), store.measurements("out")
    settings = run.hyperparameters["guard"]
    assert settings["kind"] == "steer" and settings["coefficient"] == 0.5 and settings["source"] == "probe"
    assert settings["gap"] > 0 and len(settings["directions_sha256"]) == 16
    assert ms[-1].extra["guard"]["interventions"] == 4  # one training micro-batch per step, 4 steps
    shown = runner.invoke(app, ["show", "out", "--store", str(tmp_path / "tw.db")], env={"COLUMNS": "250"})
    assert shown.exit_code == 0
    assert "Guard: steer at layer 3 on the probe subspace, coefficient 0.5 (4 interventions)." in shown.output
    report = runner.invoke(app, ["report", "out", "--store", str(tmp_path / "tw.db"), "--out", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    assert "Run out: Guard: steer at layer 3 on the probe subspace" in (tmp_path / "r.html").read_text()


def test_train_with_the_kl_guard_reads_the_base_through_the_adapter_and_stores_the_kl(basis_dir, chat_file, tmp_path):
    res = invoke(*train_args(chat_file, basis_dir, tmp_path, "--guard", "kl"))
    assert res.exit_code == 0, res.output
    assert "Guard: KL to the base model (weight 1)" in res.output
    with RunStore(tmp_path / "tw.db") as store:
        settings = store.get_run("out").hyperparameters["guard"]
        done = store.measurements("out")[-1].extra["guard"]
    assert settings == {"kind": "kl", "weight": 1.0}  # no subspace: it acts on the logits
    assert done["interventions"] == 4 and done["mean_kl"] > 0
    shown = runner.invoke(app, ["show", "out", "--store", str(tmp_path / "tw.db")], env={"COLUMNS": "250"})
    assert "Guard: kl, weight 1 (4 interventions, KL to the base model" in shown.output
    full = invoke(*train_args(chat_file, basis_dir, tmp_path / "full", "--guard", "kl", "--full"))
    assert full.exit_code == 2 and "a full finetune has no adapter" in " ".join(full.output.split()), full.output


def test_train_guards_several_blocks_from_the_basis_layer_to_the_last(basis_dir, chat_file, tmp_path):
    res = invoke(*train_args(chat_file, basis_dir, tmp_path, "--guard", "penalty", "--guard-blocks", "2"))
    assert res.exit_code == 0, res.output
    assert "beyond the base model's, at layers 3, 5" in res.output  # the tiny model's basis layer and its last block
    with RunStore(tmp_path / "tw.db") as store:
        settings = store.get_run("out").hyperparameters["guard"]
        done = store.measurements("out")[-1].extra["guard"]
    assert settings["layers"] == [3, 5] and len(settings["gaps"]) == 2 and all(g > 0 for g in settings["gaps"])
    assert len(done["base_levels"]) == 2 and done["rows_read"] > 0
    shown = runner.invoke(app, ["show", "out", "--store", str(tmp_path / "tw.db")], env={"COLUMNS": "250"})
    assert "Guard: penalty at layers 3, 5 on the probe subspace, weight 0.5 at each block" in shown.output  # 1 / 2
    assert "row readings (a row at a block) penalised" in shown.output


def test_the_penalty_guards_four_blocks_by_default_with_its_weight_spread_over_them(basis_dir, chat_file, tmp_path):
    res = invoke(*train_args(chat_file, basis_dir, tmp_path, "--guard", "penalty"))
    assert res.exit_code == 0, res.output
    with RunStore(tmp_path / "tw.db") as store:
        settings = store.get_run("out").hyperparameters["guard"]
    # layers_above(3, 6, 4): the tiny model has fewer blocks above its basis layer than asked, each is guarded once
    assert settings["layers"] == [3, 4, 5] and settings["weight"] == pytest.approx(1 / 3)


def test_train_refuses_an_unknown_guard_in_one_line(basis_dir, chat_file, tmp_path):
    def wide(*args):
        return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})

    res = wide(*train_args(chat_file, basis_dir, tmp_path, "--guard", "pray"))
    assert res.exit_code == 2 and "'pray': choose from ablate, steer, penalty, l2, kl" in res.output
    res = wide(*train_args(chat_file, basis_dir, tmp_path, "--guard", "ablate", "--guard-subspace", "vibes"))
    assert res.exit_code == 2 and "'vibes': choose from probe, traits, probe+traits" in res.output
