"""The CLI end to end on tiny-random: extract, select-layer, measure, scan, and its one-line errors."""

from __future__ import annotations

import csv
import json

import pytest
from peft import LoraConfig, get_peft_model
from typer.testing import CliRunner

from traitwatch.cli.app import app
from traitwatch.models import build_tiny_random

TRAITS_YAML = """
traits:
  harmlessness:
    positive_passages: ["A careful person avoids harm.", "A gentle soul protects others."]
    negative_passages: ["A cruel person enjoys harm.", "A reckless brute hurts others."]
  honesty:
    positive_passages: ["An honest person tells the truth.", "A truthful person admits doubt."]
    negative_passages: ["A liar deceives everyone.", "A fraud invents facts."]
contexts: ["When asked, they", "At work, they", "With friends, they"]
"""

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def basis_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    traits = root / "traits.yaml"
    traits.write_text(TRAITS_YAML)
    out = root / "basis"
    res = invoke("extract", "--model", "tiny-random", "--out", str(out), "--traits", str(traits),
                 "--method", "passages", "--layers", "1-4", "--max-new-tokens", "4", "--dtype", "float32")
    assert res.exit_code == 0, res.output
    return out


def test_extract_writes_selected_anchored_basis(basis_dir):
    meta = json.loads((basis_dir / "basis.json").read_text())
    assert meta["layers"] == [1, 2, 3, 4] and meta["layer"] in (1, 3)  # selection tries every 2nd candidate
    assert meta["anchor"]["layer"] == meta["layer"]
    assert meta["method"] == "passages" and meta["trait_names"] == ["harmlessness", "honesty"]
    assert (basis_dir / "anchor.safetensors").is_file()


def test_measure_prints_each_trait_and_writes_json(basis_dir, tmp_path):
    out = tmp_path / "m.json"
    res = invoke("measure", "--basis", str(basis_dir), "--json", str(out), "--dtype", "float32")
    assert res.exit_code == 0, res.output
    assert "harmlessness" in res.stdout and "honesty" in res.stdout
    data = json.loads(out.read_text())
    assert data["drift"] == {"harmlessness": 0.0, "honesty": 0.0}  # base model vs its own anchor
    assert len(data["per_prompt_projections"]) == 115


def test_extract_records_the_anchors_precision(basis_dir):
    meta = json.loads((basis_dir / "basis.json").read_text())
    assert (meta["anchor"]["dtype"], meta["anchor"]["device"]) == ("float32", "cpu")


def _measure_json(basis, tmp_path, dtype):
    out = tmp_path / f"m-{dtype}.json"
    res = invoke("measure", "--basis", str(basis), "--json", str(out), "--dtype", dtype)
    assert res.exit_code == 0, res.output
    return " ".join(res.stderr.split()), json.loads(out.read_text())  # rich wraps long lines


def test_measure_reanchors_when_the_model_runs_in_another_dtype_than_the_anchor(basis_dir, tmp_path):
    """The issue's case: a basis anchored in bf16, measured in fp32, gave ||d|| ~ 1e-3 at step 0 with no word."""
    import shutil

    bf16 = tmp_path / "bf16"
    shutil.copytree(basis_dir, bf16)
    assert invoke("select-layer", "--basis", str(bf16), "--set", "3", "--dtype", "bfloat16").exit_code == 0
    assert json.loads((bf16 / "basis.json").read_text())["anchor"]["dtype"] == "bfloat16"

    said, fp32 = _measure_json(bf16, tmp_path, "float32")
    assert "measured in bfloat16 on cpu; this model runs in float32 on cpu" in said
    assert fp32["drift"] == {"harmlessness": 0.0, "honesty": 0.0}  # the base model against itself, in fp32

    said, same = _measure_json(bf16, tmp_path, "bfloat16")  # the stored anchor fits: used as is
    assert "measuring the base model" not in said
    assert same["drift"] == {"harmlessness": 0.0, "honesty": 0.0}

    # what the old behaviour reported: the fp32 model against the bf16 anchor is far from zero
    from traitwatch.basis import TraitBasis
    from traitwatch.drift import DriftProbe
    from traitwatch.models import load_model

    lm = load_model("tiny-random", dtype="float32")
    probe = DriftProbe(TraitBasis.load(bf16))
    assert probe.anchor_from_basis()  # without a precision, as before
    assert probe.measure(lm.model, lm.tokenizer).norm > 1e-5  # 6.9e-5 on tiny-random, 2 traits


def test_measure_treats_an_anchor_without_a_recorded_dtype_as_unknown(basis_dir, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(basis_dir, old)
    meta = json.loads((old / "basis.json").read_text())
    del meta["anchor"]["dtype"], meta["anchor"]["device"]  # as saved before the precision was recorded
    (old / "basis.json").write_text(json.dumps(meta))
    said, data = _measure_json(old, tmp_path, "float32")
    assert "unrecorded dtype" in said
    assert data["drift"] == {"harmlessness": 0.0, "honesty": 0.0}


def test_select_layer_set_reanchors(basis_dir, tmp_path):
    import shutil

    copy = tmp_path / "b2"
    shutil.copytree(basis_dir, copy)
    res = invoke("select-layer", "--basis", str(copy), "--set", "2", "--dtype", "float32")
    assert res.exit_code == 0, res.output
    meta = json.loads((copy / "basis.json").read_text())
    assert meta["layer"] == 2 and meta["anchor"]["layer"] == 2


def _lora_checkpoint(path, seed):
    model, _ = build_tiny_random()
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(path)


def test_scan_measures_checkpoints_in_step_order(basis_dir, tmp_path):
    run = tmp_path / "run"
    for step in (10, 5, 100):  # created out of order; 100 sorts before 5 as a string
        _lora_checkpoint(run / f"checkpoint-{step}", seed=step)
    (run / "runs").mkdir()  # Trainer writes other folders too; they are ignored
    out_csv = tmp_path / "scan.csv"
    res = invoke("scan", str(run), "--basis", str(basis_dir), "--csv", str(out_csv), "--dtype", "float32")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out_csv.open()))
    assert [int(r["step"]) for r in rows] == [5, 10, 100]
    assert all(float(r["drift_norm"]) > 0 for r in rows)  # random LoRA weights move the model
    # the base model is restored between checkpoints: measuring the same adapter twice agrees
    res2 = invoke("measure", "--basis", str(basis_dir), "--adapter", str(run / "checkpoint-5"), "--json",
                  str(tmp_path / "c5.json"), "--dtype", "float32")
    assert res2.exit_code == 0, res2.output
    c5 = json.loads((tmp_path / "c5.json").read_text())
    assert float(rows[0]["drift_norm"]) == pytest.approx(c5["drift_norm"], rel=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["measure", "--basis", "/nonexistent/basis", "--model", "tiny-random"], "does not exist"),
        (["measure", "--basis", "{basis}", "--model", "tiny-random-small"], "hidden size"),
        (["extract", "--model", "tiny-random", "--out", "{tmp}/x", "--layers", "9"], "Layer 9 is out of range"),
        (["extract", "--model", "tiny-random", "--out", "{tmp}/x", "--traits", "{tmp}/empty.yaml"], "empty"),
        (["scan", "{tmp}/badrun", "--basis", "{basis}"], "neither adapter_config.json nor config.json"),
        (["scan", "{tmp}", "--basis", "{basis}"], "No checkpoint-"),
    ],
)
def test_bad_input_gives_one_line_error_and_exit_2(basis_dir, tmp_path, args, message):
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "badrun" / "checkpoint-1").mkdir(parents=True)
    small, tok = build_tiny_random(hidden_size=32)
    small.save_pretrained(tmp_path / "small")
    tok.save_pretrained(tmp_path / "small")
    args = [a.format(basis=basis_dir, tmp=tmp_path).replace("tiny-random-small", str(tmp_path / "small")) for a in args]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
    assert len([line for line in res.stderr.strip().splitlines() if line.startswith("error:")]) == 1
