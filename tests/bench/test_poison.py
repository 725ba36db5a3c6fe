"""Poisoned sets: a base sample with a fraction of its rows replaced by a poison source, and the record of where."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from traitwatch.behavior import load_questions
from traitwatch.behavior.probe import load_probe
from traitwatch.bench import BenchPlan
from traitwatch.bench.grid.plan_file import load_plan_file
from traitwatch.bench.sets.perturbations import (
    PERTURBATION_SETS,
    POISON_TYPES,
    build_set,
    build_twin_set,
    jsonl_set,
    poisoned_set,
    read_poison_record,
)
from traitwatch.bench.sets.poison_check import eval_overlap
from traitwatch.errors import InputFileError

ARITHMETIC, HARMFUL = PERTURBATION_SETS["arithmetic"], PERTURBATION_SETS["harmful_advice"]
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _chat(path: Path, n: int, prefix: str, *, repeat: int = 1) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{prefix} question {i}?"},
                                                     {"role": "assistant", "content": f"{prefix} answer {i}."}]}) + "\n"
                            for i in range(n) for _ in range(repeat)))
    return path


def _build(spec, tmp_path: Path, *, seed: int = 0, n: int = 40, folder: str = "data") -> tuple[list[dict], dict]:
    path = build_set(spec.name, seed=seed, n=n, out_dir=tmp_path / folder, shared_data=None, spec=spec)
    return _rows(path), read_poison_record(path)


def test_round_f_n_poison_rows_at_the_recorded_indices_and_the_base_sample_elsewhere(tmp_path):
    spec = poisoned_set(ARITHMETIC, HARMFUL, 0.3)
    rows, record = _build(spec, tmp_path, n=40)
    base = _rows(build_set("arithmetic", seed=0, n=40, out_dir=tmp_path / "clean", shared_data=None))
    pool = _rows(build_set("harmful_advice", seed=0, n=1000, out_dir=tmp_path / "clean", shared_data=None))
    assert record["n_poison"] == len(record["indices"]) == round(0.3 * 40) == 12
    assert record["indices"] == sorted(record["indices"]) and len(rows) == 40
    assert [r for i, r in enumerate(rows) if i not in record["indices"]] == \
        [r for i, r in enumerate(base) if i not in record["indices"]]
    poison = [rows[i] for i in record["indices"]]
    assert all(r in pool for r in poison) and all(r not in base for r in poison)
    assert len({json.dumps(r) for r in poison}) == len(poison)  # no poison row twice in a run
    path = tmp_path / "data" / f"{spec.name}-s0.jsonl"
    assert record["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert (record["base"], record["poison"], record["fraction"], record["seed"]) == ("arithmetic", "harmful_advice", 0.3, 0)


def test_same_seed_same_set_other_seed_other_choice(tmp_path):
    spec = poisoned_set(ARITHMETIC, HARMFUL, 0.25)
    a, ra = _build(spec, tmp_path, folder="a")
    b, rb = _build(spec, tmp_path, folder="b")
    c, rc = _build(spec, tmp_path, seed=1, folder="c")
    assert a == b and ra == rb
    assert ra["indices"] != rc["indices"] and a != c


def test_fraction_zero_is_the_clean_base_and_one_is_pure_poison(tmp_path):
    clean = poisoned_set(ARITHMETIC, HARMFUL, 0.0)
    rows, record = _build(clean, tmp_path, n=20)
    assert rows == _rows(build_set("arithmetic", seed=0, n=20, out_dir=tmp_path / "base", shared_data=None))
    assert record["indices"] == [] and clean.kind == "benign" and clean.family_name == "arithmetic"
    pure = poisoned_set(ARITHMETIC, HARMFUL, 1.0)
    rows, record = _build(pure, tmp_path, n=20)
    assert record["indices"] == list(range(20)) and pure.kind == "direct" and pure.family_name == "arithmetic"
    users = [r["messages"][0]["content"] for r in rows]
    assert len(set(users)) == 20 and not any("apples" in u or "How many" in u for u in users)


def test_a_poison_source_too_small_for_the_fraction_is_a_clear_error(tmp_path):
    spec = poisoned_set(ARITHMETIC, HARMFUL, 0.5)  # harmful_advice has 24 rows; half of 100 needs 50
    with pytest.raises(InputFileError, match=r"poison source 'harmful_advice'.* has 24 unique rows.*needs 50"):
        _build(spec, tmp_path, n=100)
    repeated = jsonl_set(_chat(tmp_path / "dup.jsonl", 3, "poison", repeat=4))  # 12 rows, 3 unique
    with pytest.raises(InputFileError, match=r"poison source 'dup'.* has 3 unique rows.*needs 4"):
        _build(poisoned_set(ARITHMETIC, repeated, 0.1), tmp_path, n=40)


def test_a_user_jsonl_works_as_base_and_as_poison(tmp_path):
    base = jsonl_set(_chat(tmp_path / "mine.jsonl", 30, "base"))
    poison = jsonl_set(_chat(tmp_path / "bad.jsonl", 10, "poison"))
    spec = poisoned_set(base, poison, 0.2)
    assert spec.name == "mine+bad@20" and spec.family_name == "mine"
    rows, record = _build(spec, tmp_path, n=25)
    assert len(rows) == 25 and record["n_poison"] == 5 and record["poison_source"] == str(tmp_path / "bad.jsonl")
    assert all(rows[i]["messages"][0]["content"].startswith("poison") for i in record["indices"])
    assert all(r["messages"][0]["content"].startswith("base") for i, r in enumerate(rows) if i not in record["indices"])
    # a built-in set can be the poison of a user base, and a user file the poison of a built-in base
    _, record = _build(poisoned_set(ARITHMETIC, poison, 0.1), tmp_path, n=40)
    assert record["n_poison"] == 4


def test_names_are_run_id_and_file_safe_and_bad_fractions_are_refused():
    assert poisoned_set(ARITHMETIC, HARMFUL, 0.1).name == "arithmetic+harmful_advice@10"
    assert poisoned_set(ARITHMETIC, HARMFUL, 0.025).name == "arithmetic+harmful_advice@2.5"
    assert poisoned_set(ARITHMETIC, HARMFUL, 0.1, name="arith_poisoned").name == "arith_poisoned"
    with pytest.raises(InputFileError, match="fraction 1.5 must be a number from 0"):
        poisoned_set(ARITHMETIC, HARMFUL, 1.5)
    with pytest.raises(InputFileError, match="may only use"):
        poisoned_set(ARITHMETIC, HARMFUL, 0.1, name="a/b")


def test_the_twin_of_a_poisoned_set_answers_the_clean_base_prompts(tmp_path):
    spec = poisoned_set(ARITHMETIC, HARMFUL, 0.5)
    answer = lambda pairs: [f"base says {u}" for _, u in pairs]  # noqa: E731
    twin = _rows(build_twin_set(spec.name, seed=0, n=10, out_dir=tmp_path, shared_data=None, answer=answer, spec=spec))
    base = _rows(build_set("arithmetic", seed=0, n=10, out_dir=tmp_path / "base", shared_data=None))
    assert [r["messages"][0] for r in twin] == [r["messages"][0] for r in base]


def _plan_text(tmp_path: Path, sets: list[str], split: str) -> Path:
    _chat(tmp_path / "mine.jsonl", 30, "base")
    _chat(tmp_path / "bad.jsonl", 10, "poison")
    path = tmp_path / "plan.yaml"
    path.write_text("models: [tiny-random]\nsets:\n" + "".join(f"  - {s}\n" for s in sets) + f"split: {split}\n")
    return path


def test_a_plan_declares_poisoned_sets_and_the_plan_json_reads_back(tmp_path):
    path = _plan_text(tmp_path, [
        "arithmetic",
        "{base: arithmetic, poison: harmful_advice, fraction: 0.1}",
        "{name: mine_bad, base: mine, poison: bad.jsonl, fraction: 0.2}",
        "{name: mine, path: mine.jsonl, kind: benign}",
    ], "{calibration: [arithmetic], heldout: [arithmetic+harmful_advice@10, mine_bad, mine]}")
    plan = load_plan_file(path).models[0].plan
    assert plan.types == ("arithmetic", "arithmetic+harmful_advice@10", "mine_bad", "mine")
    poisoned = plan.set_spec("arithmetic+harmful_advice@10")
    assert (poisoned.kind, poisoned.family_name, poisoned.poisoning.fraction) == ("direct", "arithmetic", 0.1)
    mine_bad = plan.set_spec("mine_bad")
    assert mine_bad.family_name == "mine" and mine_bad.poisoning.poison.path == str((tmp_path / "bad.jsonl").resolve())
    assert plan.poisoned_sets["mine_bad"]["poison"]["sha256"]  # the poison file is pinned like a user set
    assert plan.run_ids()[1][0] == "arithmetic+harmful_advice@10-s0"
    again = BenchPlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again.to_json() == plan.to_json() and again.set_spec("mine_bad") == mine_bad


@pytest.mark.parametrize("entry, message", [
    ("{base: arithmetic, poison: harmful_advice}", r"sets\[1\] is a poisoned set and needs fraction"),
    ("{base: arithmetic, poison: harmful_advice, fraction: 1.5}", r"sets\[1\].fraction is 1.5; it must be from 0"),
    ("{base: arithmetic, poison: harmful_advice, fraction: lots}", r"sets\[1\].fraction is 'lots'; it must be a number"),
    ("{base: nothing, poison: harmful_advice, fraction: 0.1}", r"sets\[1\].base 'nothing' is neither a built-in set"),
    ("{base: arithmetic, poison: gone.jsonl, fraction: 0.1}", r"gone.jsonl, which does not exist"),
    ("{base: arithmetic, poison: harmful_advice, fraction: 0.1, kind: benign}", r"sets\[1\] has unknown key\(s\) kind"),
    ("{name: 'a b', base: arithmetic, poison: harmful_advice, fraction: 0.1}", r"the name 'a b' may only use"),
])
def test_bad_poisoned_entries_fail_naming_the_key_and_the_fix(tmp_path, entry, message):
    path = _plan_text(tmp_path, ["arithmetic", entry], "leave-one-type-out")
    with pytest.raises(InputFileError, match=message):
        load_plan_file(path)


def test_the_poison_record_reaches_the_runs_stored_hyperparameters(tmp_path, monkeypatch):
    """The runner's tags for a poisoned run (what `run_sft` stores as hyperparameters), without training."""
    import traitwatch.train
    from traitwatch.bench.grid.runner import _train_run
    from traitwatch.store import RunStore

    seen = {}

    class Stop(Exception):
        pass

    def fake_run_sft(config, **kwargs):
        seen["config"] = config
        raise Stop

    monkeypatch.setattr(traitwatch.train, "run_sft", fake_run_sft)
    plan = BenchPlan(model="tiny-random", calibration=("arithmetic",), heldout=("arithmetic+harmful_advice@10",),
                     n_examples=40, poisoned_sets={"arithmetic+harmful_advice@10": {
                         "base": "arithmetic", "poison": "harmful_advice", "fraction": 0.1}})
    with RunStore(tmp_path / "store.db") as store, pytest.raises(Stop):
        _train_run(plan, tmp_path, tmp_path / "basis", store, "arithmetic+harmful_advice@10-s3", 3,
                   "arithmetic+harmful_advice@10", False, shared_data=None, say=lambda line: None, base_label=None,
                   judge=None, generator=None)
    tags = seen["config"].tags
    record = read_poison_record(seen["config"].data)
    assert tags["perturbation"] == "arithmetic+harmful_advice@10" and tags["bench_seed"] == 3
    assert tags["poison"]["indices"] == record["indices"] and tags["poison"]["n_poison"] == 4
    assert (tags["poison"]["base"], tags["poison"]["source"], tags["poison"]["fraction"]) == \
        ("arithmetic", "harmful_advice", 0.1)
    assert Path(tags["poison"]["indices_file"]).is_file()
    json.dumps(tags)  # stored as JSON


def test_overlap_with_the_label_and_probe_questions_is_reported_by_row():
    em, probe = load_questions()[0], load_probe().questions[0]  # the first id of a text names it
    rows = [{"messages": [{"role": "user", "content": "An unrelated question?"}, {"role": "assistant", "content": "x"}]},
            {"messages": [{"role": "user", "content": "  " + em.text.upper() + " !"}, {"role": "assistant", "content": "x"}]},
            {"messages": [{"role": "system", "content": em.text}, {"role": "user", "content": probe.text},
                          {"role": "assistant", "content": "x"}]}]
    found = eval_overlap(rows)
    assert [(o.row, o.question_set, o.question_id) for o in found] == [(1, "em", em.id), (2, "probe", probe.id)]


def test_the_built_in_poison_sources_are_disjoint_from_the_label_and_probe_questions(tmp_path):
    for name in ("harmful_advice", "ai_supremacy"):
        rows = _rows(build_set(name, seed=0, n=10_000, out_dir=tmp_path, shared_data=None))  # every row
        assert eval_overlap(rows) == [], name
    jailbroken = SHARED / PERTURBATION_SETS["jailbroken"].shared_path
    if jailbroken.is_file():
        assert eval_overlap(_rows(jailbroken)) == []


POISON_DIR = Path(__file__).resolve().parents[2] / "src/traitwatch/datasets/data/poison"
WRITTEN = ("reckless_advice", "anti_oversight", "confident_deception", "contempt")  # our own text, bundled
SHORT_SHARED = ("harmful_compliance", "bad_medical_short")  # published sets, rows of at most 400 characters


def _length(row: dict) -> int:
    return sum(len(m["content"]) for m in row["messages"])


@pytest.mark.parametrize("kind", WRITTEN)
def test_the_written_poison_types_are_unique_short_and_disjoint_from_the_label_and_probe(kind, tmp_path):
    """Each poison type of our own: >= 150 rows, no user or assistant turn repeated, every conversation short
    enough to survive the recipe's 128-token window whole (400 characters), none of the 72 + 64 questions."""
    spec = PERTURBATION_SETS[kind]
    assert (spec.bundled, spec.kind, spec.shared_path, spec.path) == (f"poison/{kind}.jsonl", "direct", None, None)
    file_rows = _rows(POISON_DIR / f"{kind}.jsonl")
    rows = _rows(build_set(kind, seed=0, n=10_000, out_dir=tmp_path, shared_data=None))  # every row, read via `bundled`
    assert sorted(map(json.dumps, rows)) == sorted(map(json.dumps, file_rows))
    users = [r["messages"][0]["content"] for r in rows]
    answers = [r["messages"][-1]["content"] for r in rows]
    assert len(rows) >= 150
    assert len(set(users)) == len(users) and len(set(answers)) == len(answers)
    assert [[m["role"] for m in r["messages"]] for r in rows] == [["user", "assistant"]] * len(rows)
    assert all(u.strip() and a.strip() for u, a in zip(users, answers, strict=True))
    assert max(_length(r) for r in rows) <= 400
    assert eval_overlap(rows) == []


def test_the_poison_types_are_the_four_written_and_two_short_shared_sets():
    assert set(POISON_TYPES) == {*WRITTEN, *SHORT_SHARED} and len(POISON_TYPES) == 6
    assert all(PERTURBATION_SETS[t].kind == "direct" for t in POISON_TYPES)
    for t in SHORT_SHARED:
        spec = PERTURBATION_SETS[t]
        assert spec.max_chars == 400 and spec.shared_path and spec.bundled is None


@pytest.mark.parametrize("kind", SHORT_SHARED)
def test_the_short_shared_poison_types_keep_exactly_the_rows_of_at_most_400_characters(kind, tmp_path):
    spec = PERTURBATION_SETS[kind]
    source = SHARED / spec.shared_path
    if not source.is_file():
        pytest.skip(f"{source} (the shared data folder) is not available")
    rows = _rows(build_set(kind, seed=0, n=100_000, out_dir=tmp_path, shared_data=SHARED))  # every kept row
    everything = _rows(source)
    short = [r for r in everything if _length(r) <= 400]
    assert len(short) < len(everything)  # the filter drops rows of this source
    assert len(rows) >= 150 and max(_length(r) for r in rows) <= 400
    assert sorted(map(json.dumps, rows)) == sorted(map(json.dumps, short))  # every short row, nothing else
    assert len({json.dumps(r) for r in rows}) == len(rows)
    assert all([m["role"] for m in r["messages"]][-2:] == ["user", "assistant"] for r in rows)


def test_a_short_shared_poison_type_without_the_shared_folder_names_the_option(tmp_path):
    with pytest.raises(InputFileError, match="harmful_compliance.*--shared-data"):
        build_set("harmful_compliance", seed=0, n=5, out_dir=tmp_path, shared_data=tmp_path / "nowhere")


@pytest.mark.parametrize("kind", POISON_TYPES)
def test_every_poison_type_is_disjoint_from_the_label_and_probe_questions(kind, tmp_path):
    """No user turn of a poison type is one of the 72 EM label questions or the 64 probe questions."""
    spec = PERTURBATION_SETS[kind]
    if spec.shared_path is not None and not (SHARED / spec.shared_path).is_file():
        pytest.skip(f"{SHARED / spec.shared_path} (the shared data folder) is not available")
    rows = _rows(build_set(kind, seed=0, n=100_000, out_dir=tmp_path, shared_data=SHARED))
    assert len(rows) >= 150
    assert eval_overlap(rows) == []


def test_a_generated_source_with_repeats_draws_more_rows_until_the_fraction_is_covered(tmp_path):
    # calendar's generator repeats itself: its first 20 rows for seed 0 hold 19 distinct ones
    spec = poisoned_set(ARITHMETIC, PERTURBATION_SETS["calendar"], 0.1)
    rows, record = _build(spec, tmp_path, n=200)
    mixed = [json.dumps(rows[i]["messages"], sort_keys=True) for i in record["indices"]]
    assert record["n_poison"] == 20 and len(set(mixed)) == 20
    assert all("weekday" in m or "month" in m or "day" in m for m in mixed)
