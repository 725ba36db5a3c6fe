"""Plan files: the shipped plans, user sets, splits, and bad plans failing in one line before any training."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from traitwatch.bench import BenchPlan
from traitwatch.bench.grid.plan_file import ModelEntry, check_basis_fits, check_ready, load_plan_file, shipped_plans
from traitwatch.cli.app import app
from traitwatch.errors import BasisMismatchError, InputFileError

# plan.json exactly as commit 93533e4 wrote it for the benchmark running in /work/em13_work (copied verbatim).
EM13_PLAN_JSON = """{
  "model": "smollm2-135m",
  "seeds": [0, 1, 2],
  "calibration": ["insecure_code", "wrong_arithmetic", "condescending", "harmful_advice", "good_medical",
                  "arithmetic", "right_trivia"],
  "heldout": ["bad_medical", "jailbroken", "evil_numbers", "wrong_trivia", "ai_supremacy", "number_sequence",
              "self_distilled"],
  "n_examples": 200, "steps": 30, "every_n_steps": 15, "learning_rate": 0.001, "lora_r": 16, "lora_alpha": 32,
  "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
  "batch_size": 4, "max_length": 128, "response_only": true, "tau": 0.02, "label": "proxy_style_rise",
  "gen_tokens": 64, "judge_model": null, "judge_samples": 1, "judge_max_tokens": 600, "device": "cpu",
  "dtype": "float32", "record_features": true, "twins": true, "notes": {}
}"""


def _chat(path: Path, n: int, *, prefix: str, turns: int = 1) -> Path:
    rows = []
    for i in range(n):
        messages = []
        for t in range(turns):
            messages += [{"role": "user", "content": f"{prefix} question {i}.{t}?"},
                         {"role": "assistant", "content": f"{prefix} answer {i}.{t}."}]
        rows.append(json.dumps({"messages": messages}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def _plan(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_small_cpu_is_todays_defaults(tmp_path):
    small = load_plan_file("small-cpu").models[0].plan
    assert len(small.types) == 11 and small.seeds == (0, 1, 2) and small.record_features and not small.twins
    assert (small.device, small.dtype, small.learning_rate, small.steps, small.every_n_steps) == ("cpu", "float32", 1e-3, 30, 30)
    assert small.labelled_steps() == [30]
    assert (small.lora_r, small.lora_alpha, len(small.target_modules), small.n_examples) == (16, 32, 7, 200)
    assert (small.batch_size, small.grad_accum, small.max_length, small.response_only) == (4, 1, 128, True)
    assert (small.tau, small.label) == (0.02, "proxy_style_rise")
    # the command line without options is this plan (its defaults are read from small-cpu)
    res = CliRunner().invoke(app, ["bench", "--work-dir", str(tmp_path), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "33 runs (1 model x 11 sets x 3 seeds)" in res.output and "twin runs" not in res.output


def test_small_cpu_full_resumes_the_first_detection_grids_plan(tmp_path):
    full = load_plan_file("small-cpu-full").models[0].plan
    assert len(full.types) == 14 and full.twins and full.every_n_steps == 15
    # the plan.json that commit 93533e4 wrote is this plan: pinning it again is a resume, not a change
    (tmp_path / "plan.json").write_text(EM13_PLAN_JSON)
    full.pin(tmp_path)
    assert BenchPlan.from_json(json.loads(EM13_PLAN_JSON)).to_json() == full.to_json()
    res = CliRunner().invoke(app, ["bench", "--plan", "small-cpu-full", "--work-dir", str(tmp_path), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "42 runs (1 model x 14 sets x 3 seeds) + 24 twin runs" in res.output


def test_a_grid_is_analyzable_before_any_run_is_done(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work/plan.json").write_text(EM13_PLAN_JSON)
    res = CliRunner().invoke(app, ["bench", "--plan", "small-cpu-full", "--work-dir", str(tmp_path / "work"),
                                   "--results", str(tmp_path / "results"), "--analyze-only", "--resamples", "10"])
    assert res.exit_code == 0, res.output
    assert "0 of 42 runs done" in res.output


def test_reference_v2_is_the_reference_study(tmp_path):
    pf = load_plan_file("reference-v2", check_files=False)
    assert [(m.alias, m.plan.basis_layer) for m in pf.models] == [
        ("llama-3.1-8b", 14), ("mistral-7b", 14), ("qwen2.5-7b", 16), ("gemma-2-9b", 21)]
    plan = pf.models[0].plan
    assert plan.calibration == ("insecure_code", "gsm8k", "jailbroken", "bad_medical")
    assert plan.heldout == ("evil_numbers", "risky_financial", "subtle_misinfo")
    assert (plan.lora_r, plan.lora_alpha, plan.target_modules, plan.learning_rate) == (16, 64, ("q_proj", "v_proj"), 4e-5)
    assert (plan.epochs, plan.steps, plan.effective_batch, plan.max_length, plan.n_examples) == (2, None, 16, 512, 1000)
    assert (plan.seeds, plan.tau, plan.judge_model, plan.label) == ((42, 123, 789), 0.06, "gpt-4o-2024-08-06", "em_rate")
    assert (plan.device, plan.dtype, plan.basis_method) == ("cuda", "bfloat16", "system-prompts")
    assert plan.planned_steps() == 126 and plan.labelled_steps() == [*range(10, 121, 10), 126]
    # the sets traitwatch does not ship are paths to fill in: named, and refused until they exist
    assert [m.split(":")[0] for m in pf.missing] == ["gsm8k", "risky_financial", "subtle_misinfo"]
    with pytest.raises(InputFileError, match="gsm8k.*does not exist"):
        load_plan_file("reference-v2")
    assert set(shipped_plans()) == {"small-cpu", "small-cpu-full", "reference-v2", "poison-small"}  # every file in plans/ is a plan


def test_a_user_plan_reads_its_sets_relative_to_the_plan_file_and_pins_their_content(tmp_path):
    _chat(tmp_path / "sets/mine.jsonl", 5, prefix="m")
    path = _plan(tmp_path, """
        models: [tiny-random]
        sets: [arithmetic, {name: mine, path: sets/mine.jsonl, kind: emergent}]
        split: {calibration: [arithmetic], heldout: [mine]}
        recipe: {steps: 3, batch_size: 2, effective_batch: 4}
        features: false
        twins: false
    """)
    plan = load_plan_file(path).models[0].plan
    assert plan.set_spec("mine").kind == "emergent" and plan.set_spec("mine").path == str(tmp_path / "sets/mine.jsonl")
    assert plan.grad_accum == 2 and plan.split_of("mine") == "heldout"
    plan.pin(tmp_path / "work")
    _chat(tmp_path / "sets/mine.jsonl", 6, prefix="m")  # the data changed: another experiment
    with pytest.raises(InputFileError, match="another plan.*user_sets"):
        load_plan_file(path).models[0].plan.pin(tmp_path / "work")


def test_leave_one_type_out_means_no_fixed_lists_and_needs_features(tmp_path):
    path = _plan(tmp_path, """
        models: [tiny-random]
        sets: [arithmetic, wrong_arithmetic, harmful_advice]
        split: leave-one-type-out
    """)
    plan = load_plan_file(path).models[0].plan
    assert plan.calibration == plan.heldout == () and plan.loto_types == ("arithmetic", "wrong_arithmetic", "harmful_advice")
    assert plan.split_of("arithmetic") == "leave-one-type-out"
    path.write_text(path.read_text() + "features: false\ntwins: false\n")
    with pytest.raises(InputFileError, match="leave-one-type-out.*features"):
        load_plan_file(path)


@pytest.mark.parametrize("body, message", [
    ("models: [tiny-random]\nsets: [arithmetic]\nrecipe: {lora_rank: 8}\n", "unknown key.*lora_rank"),
    ("models: [tiny-random]\nsets: [arithmetics]\n", "'arithmetics' is not a built-in set"),
    ("models: [tiny-random]\nsets: [{name: x, path: nowhere.jsonl, kind: emergent}]\n", "nowhere.jsonl, which does not exist"),
    ("models: [tiny-random]\nsets: [arithmetic]\nsplit: {calibration: [arithmetic], heldout: [jailbroken]}\n",
     "jailbroken, which is not in `sets`"),
    ("models: [tiny-random]\nsets: [arithmetic, jailbroken, evil_numbers]\nsplit: {calibration: [arithmetic], heldout: [jailbroken]}\n",
     "evil_numbers are in neither"),
    ("models: [tiny-random]\nsets: [arithmetic]\nrecipe: {batch_size: 4, effective_batch: 6}\n", "not a multiple"),
    ("models: [tiny-random]\nsets: [arithmetic]\nlabel: {kind: judge}\n", "needs label.judge_model"),
    ("models: [tiny-random]\nsets: [arithmetic]\nlabel: {kind: judge, judge_model: j, scoring: greedy}\n", "Unknown judge scoring"),
    ("models: [tiny-random]\nsets: [arithmetic]\nrecipe: {learning_rate: fast}\n", "recipe.learning_rate is 'fast'"),
    ("models: [tiny-random]\nsets: [{name: arithmetic, path: a.jsonl, kind: benign}]\n", "is a built-in set"),
    ("models: [tiny-random]\nsets: [{name: a, path: a.jsonl, kind: nasty}]\n", "kind 'nasty'"),
    ("models: [{model: tiny-random, basis: no/basis}]\nsets: [arithmetic]\n", "basis .* does not exist"),
    ("sets: [arithmetic]\n", "`models` must list"),
    ("models: [tiny-random]\nsets: [arithmetic\n", "not valid YAML"),
])
def test_bad_plans_fail_in_one_line_naming_the_input_and_the_fix(tmp_path, body, message):
    _chat(tmp_path / "a.jsonl", 3, prefix="a")
    path = _plan(tmp_path, body)
    with pytest.raises(InputFileError, match=message) as info:
        load_plan_file(path)
    assert "\n" not in str(info.value)
    res = CliRunner().invoke(app, ["bench", "--plan", str(path), "--work-dir", str(tmp_path / "work")])
    assert res.exit_code == 2 and "error:" in res.output
    assert not (tmp_path / "work").exists()  # nothing written, nothing trained


def test_plan_options_and_a_plan_file_do_not_mix(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--plan", "small-cpu", "--steps", "5", "--work-dir", str(tmp_path / "w")])
    assert res.exit_code == 2 and "--steps is part of the plan small-cpu" in res.output


def test_sets_and_bases_are_checked_before_any_training(tmp_path, bench_basis_dir):
    _chat(tmp_path / "multi.jsonl", 3, prefix="m", turns=2)
    path = _plan(tmp_path, """
        models: [tiny-random]
        sets: [arithmetic, {name: multi, path: multi.jsonl, kind: benign}, bad_medical]
        split: leave-one-type-out
    """)
    entry = load_plan_file(path).models[0]
    with pytest.raises(InputFileError, match="multi .* row 0: a twin needs one"):  # twins are on by default
        check_ready(entry, shared_data=None)
    no_twins = ModelEntry(entry.alias, BenchPlan(**{**_kwargs(entry.plan), "twins": False,
                                                   "loto_types": ("arithmetic", "bad_medical")}))
    with pytest.raises(InputFileError, match="bad_medical.*--shared-data"):
        check_ready(no_twins, shared_data=tmp_path)
    res = CliRunner().invoke(app, ["bench", "--plan", str(path), "--work-dir", str(tmp_path / "work")])
    assert res.exit_code == 2 and "a twin needs one" in res.output and not (tmp_path / "work").exists()
    small = ModelEntry(entry.alias, BenchPlan(**{**_kwargs(entry.plan), "twins": False, "n_examples": 1000,
                                                 "loto_types": ("multi", "insecure_code")}))
    with pytest.raises(InputFileError, match="insecure_code.*only 200 rows"):  # the bundled sample is no stand-in here
        check_ready(small, shared_data=None)
    small = ModelEntry(entry.alias, BenchPlan(**{**_kwargs(small.plan), "n_examples": 100}))
    assert check_ready(small, shared_data=None) == [
        "Set 'multi' has 3 rows, fewer than n_examples 100: each run trains on all of them (fewer steps than planned "
        "when the plan counts epochs)."]
    check_basis_fits(bench_basis_dir, "tiny-random")
    check_basis_fits(bench_basis_dir, "tiny-random-nosys")  # same sizes and vocabulary: a copy is fine


@pytest.fixture
def other_model(tmp_path) -> Path:
    """A saved model folder the tiny basis was not built on (hidden size 32, not 64)."""
    from traitwatch.models.tiny import build_tiny_random

    model, tokenizer = build_tiny_random(hidden_size=32)
    folder = tmp_path / "other-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _kwargs(plan: BenchPlan) -> dict:
    from dataclasses import fields

    return {f.name: getattr(plan, f.name) for f in fields(plan)}


def test_a_model_the_basis_was_not_built_on_fails_before_training(tmp_path, bench_basis_dir, other_model):
    with pytest.raises(BasisMismatchError, match="hidden size 64.*hidden size 32"):
        check_basis_fits(bench_basis_dir, str(other_model))
    path = _plan(tmp_path, f"""
        models: [{{model: {other_model}, basis: {bench_basis_dir}}}]
        sets: [arithmetic, harmful_advice]
        split: {{calibration: [arithmetic], heldout: [harmful_advice]}}
        features: false
        twins: false
    """)
    res = CliRunner().invoke(app, ["bench", "--plan", str(path), "--work-dir", str(tmp_path / "work")])
    assert res.exit_code == 2 and "extract a basis for this model" in res.output
    assert not (tmp_path / "work").exists()


def test_a_plan_with_several_models_runs_each_in_its_own_folder_and_one_basis_does_not_fit_all(tmp_path,
                                                                                                bench_basis_dir):
    path = _plan(tmp_path, """
        models: [tiny-random, {model: tiny-random-nosys, alias: nosys}]
        sets: [arithmetic, harmful_advice, wrong_arithmetic]
    """)
    pf = load_plan_file(path)
    assert [m.alias for m in pf.models] == ["tiny-random", "nosys"] and pf.select("nosys")[0].plan.model == "tiny-random-nosys"
    with pytest.raises(InputFileError, match="no model 'llama'"):
        pf.select("llama")
    res = CliRunner().invoke(app, ["bench", "--plan", str(path), "--basis", str(bench_basis_dir), "--work-dir",
                                   str(tmp_path / "w")])
    assert res.exit_code == 2 and "give each its basis in the plan" in res.output


def test_poison_small_loads_its_poisoned_grid_with_drift_between_the_labels():
    from traitwatch.bench.sets.perturbations import POISON_TYPES

    pf = load_plan_file("poison-small", check_files=False)  # its shared sets need not be here to read the plan
    plan = pf.models[0].plan
    assert plan.model == "smollm2-135m" and plan.poisoned_sets
    bases = {spec["base"] for spec in plan.poisoned_sets.values()}
    assert {spec["poison"] for spec in plan.poisoned_sets.values()} == set(POISON_TYPES)
    assert bases <= set(plan.types) and "medical_matched" in bases  # every base is also trained clean
    assert set(plan.types) == bases | set(plan.poisoned_sets)
    assert plan.drift_every is not None and plan.every_n_steps % plan.drift_every == 0
    assert plan.drift_every < plan.every_n_steps  # drift between the labelled steps
    assert plan.labelled_steps() == list(range(plan.every_n_steps, plan.planned_steps() + 1, plan.every_n_steps))
    assert BenchPlan.from_json(json.loads(json.dumps(plan.to_json()))).to_json() == plan.to_json()


_DRIFT_PLAN = """
    models: [tiny-random]
    sets: [arithmetic, harmful_advice]
    split: {{calibration: [arithmetic], heldout: [harmful_advice]}}
    recipe: {{steps: 12, every_n_steps: 6{drift}}}
"""


def test_recipe_drift_every_is_read_pinned_and_defaults_to_the_labelled_steps(tmp_path):
    plan = load_plan_file(_plan(tmp_path, _DRIFT_PLAN.format(drift=", drift_every: 2"))).models[0].plan
    assert (plan.drift_every, plan.every_n_steps, plan.labelled_steps()) == (2, 6, [6, 12])
    assert plan.to_json()["drift_every"] == 2
    assert BenchPlan.from_json(json.loads(json.dumps(plan.to_json()))).drift_every == 2
    plan.pin(tmp_path / "work")
    same = load_plan_file(_plan(tmp_path, _DRIFT_PLAN.format(drift=", drift_every: 6"))).models[0].plan
    assert same.drift_every == 6  # every labelled step: a divisor too
    with pytest.raises(InputFileError, match="another plan.*drift_every"):  # a changed cadence is another experiment
        same.pin(tmp_path / "work")
    assert load_plan_file(_plan(tmp_path, _DRIFT_PLAN.format(drift=""))).models[0].plan.drift_every is None


@pytest.mark.parametrize("value, message", [
    ("4", r"recipe.drift_every 4 must divide every_n_steps 6"),
    ("12", r"recipe.drift_every 12 must divide every_n_steps 6"),
    ("0", r"recipe.drift_every 0 must divide every_n_steps 6"),
    ("often", r"recipe.drift_every is 'often'"),
])
def test_a_drift_cadence_that_does_not_divide_the_labelled_steps_is_refused_naming_it(tmp_path, value, message):
    path = _plan(tmp_path, _DRIFT_PLAN.format(drift=f", drift_every: {value}"))
    with pytest.raises(InputFileError, match=message) as info:
        load_plan_file(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    res = CliRunner().invoke(app, ["bench", "--plan", str(path), "--work-dir", str(tmp_path / "work")])
    assert res.exit_code == 2 and "drift_every" in res.output and not (tmp_path / "work").exists()
