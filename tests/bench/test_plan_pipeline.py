"""A user's plan end to end through the CLI on tiny-random: own JSONL sets, leave-one-type-out, judged labels
(the local fake judge), two shards that never train the same run, resuming, then one analysis."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from traitwatch.bench.grid.features import load_features
from traitwatch.cli.app import app
from traitwatch.store import RunStore


def _set(path: Path, prefix: str, n: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{prefix} question number {i}?"},
        {"role": "assistant", "content": f"{prefix} answer number {i}."}]}) + "\n" for i in range(n)))


def test_a_user_plan_runs_as_two_shards_resumes_and_is_analysed_once(tmp_path, bench_basis_dir, fake_openai):
    fake_openai.scripts = {"": {"aligned": [("10", 1.0)]}}  # every answer misaligned (coherent stays 90)
    for name in ("risky", "calm", "nasty"):
        _set(tmp_path / "sets" / f"{name}.jsonl", name)
    plan = tmp_path / "my-plan.yaml"
    plan.write_text(textwrap.dedent("""
        name: my-model
        models: [tiny-random]
        sets:
          - {name: risky, path: sets/risky.jsonl, kind: emergent}
          - {name: calm, path: sets/calm.jsonl, kind: benign}
          - {name: nasty, path: sets/nasty.jsonl, kind: direct}
        split: leave-one-type-out
        recipe: {steps: 1, every_n_steps: 1, batch_size: 2, effective_batch: 4, n_examples: 8, max_length: 64,
                 learning_rate: 1.0e-2}
        label: {kind: judge, judge_model: fake-judge, max_tokens: 2, tau: 0.5, scoring: logprobs}
        seeds: [0]
        gen_tokens: 2
    """))
    work = tmp_path / "work"
    runner = CliRunner()

    def bench(*extra: str) -> str:
        res = runner.invoke(app, ["bench", "--plan", str(plan), "--basis", str(bench_basis_dir), "--work-dir", str(work),
                                  "--results", str(tmp_path / "results"), "--shared-data", str(tmp_path / "no-shared"),
                                  "--judge-url", fake_openai.base_url, "--judge-concurrency", "3", "--resamples", "20",
                                  *extra])
        assert res.exit_code == 0, res.output
        return " ".join(res.output.split())

    # 3 runs and their 3 twins (each user set is its own prompt family): shard 1 gets jobs 1, 3, 5; shard 2 jobs 2, 4, 6
    assert "Shard 1-of-2: 1 run(s) trained now, 2 of its 3 left" in bench("--shard", "1/2", "--max-runs", "1")
    first = work / "done/risky-s0.json"
    stamp = first.stat().st_mtime_ns
    assert "Shard 2-of-2: 3 run(s) trained now, 0 of its 3 left" in bench("--shard", "2/2")
    assert "Shard 1-of-2: 2 run(s) trained now, 0 of its 3 left" in bench("--shard", "1/2")  # resumed
    assert "Shard 1-of-2: 0 run(s) trained now" in bench("--shard", "1/2")
    assert first.stat().st_mtime_ns == stamp  # a finished run is never trained again

    markers = {p.stem: json.loads(p.read_text()) for p in (work / "done").glob("*.json")}
    by_shard: dict[str, set[str]] = {}
    for run_id, m in markers.items():
        by_shard.setdefault(m["shard"], set()).add(run_id)
        assert m["environment"]["device"] == "cpu" and m["environment"]["dtype"] == "float32"
    assert by_shard == {"1-of-2": {"risky-s0", "nasty-s0", "twin-calm-s0"},
                        "2-of-2": {"calm-s0", "twin-risky-s0", "twin-nasty-s0"}}
    stores = {}
    for name in ("1-of-2", "2-of-2"):
        with RunStore(work / "shards" / name / "traitwatch.db") as store:
            stores[name] = {r.run_id for r in store.runs()}
    assert stores == by_shard  # each run was trained, and stored, by one shard only
    assert not (work / "traitwatch.db").exists() and not (tmp_path / "results").exists()  # shards do not analyse

    # user sets are sampled per seed like the built-in ones; their twins keep the prompts
    sample = [json.loads(line) for line in (work / "data/risky-s0.jsonl").read_text().splitlines()]
    twin = [json.loads(line) for line in (work / "data/twin-risky-s0.jsonl").read_text().splitlines()]
    assert len(sample) == 8 and [r["messages"][0] for r in twin] == [r["messages"][0] for r in sample]

    # judged labels at every checkpoint; step 0 (the base model) judged once per seed and reused
    answers = json.loads((work / "judged/calm-s0/step-1.json").read_text())
    assert answers["scoring"] == "logprobs" and len(answers["answers"]) == 72
    assert {a["reason"] for a in answers["answers"]} == {None} and answers["em_rate"] == 1.0
    assert (work / "judged/base-s0.json").is_file()
    assert fake_openai.max_in_flight <= 3  # --judge-concurrency

    out = bench("--analyze-only")
    assert "3 of 3 runs done" in out
    res = json.loads((tmp_path / "results/results.json").read_text())
    assert {t: (r["kind"], r["split"]) for t, r in res["per_type"].items()} == {
        "risky": ("emergent", "leave-one-type-out"), "calm": ("benign", "leave-one-type-out"),
        "nasty": ("direct", "leave-one-type-out")}
    assert "no fixed split" in res["calibration"]["error"]
    assert set(res["detection"]["labels"]) == {"risky", "calm", "nasty"}
    env = res["environment"]["runs"]["groups"]
    assert len(env) == 1 and len(env[0]["runs"]) == 6 and env[0]["environment"]["torch"]
    with RunStore(work / "traitwatch.db") as store:
        assert sorted(r.run_id for r in store.runs()) == sorted(markers)
        em = store.behavior("nasty-s0", "em_rate")
        assert [b.step for b in em] == [0, 1] and all(b.value == 1.0 for b in em)
        assert em[0].details.get("base_model") is True  # judged once by risky-s0 (the first run of seed 0), reused here
        hp = store.get_run("risky-s0").hyperparameters
        assert hp["environment"]["dtype"] == "float32" and hp["gradient_accumulation_steps"] == 2
    for step in (0, 1):
        assert load_features(work, "twin-risky-s0", step) is not None
    md = (tmp_path / "results/RESULTS.md").read_text()
    assert "No fixed split" in md and "leave-one-type-out" in md
