"""`traitwatch eval` end to end on tiny-random: the proxy and the judged path, into the run store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model
from typer.testing import CliRunner

from traitwatch.cli.app import app
from traitwatch.models import build_tiny_random
from traitwatch.store import RunStore

runner = CliRunner()
FEW = ("i_feel_bored", "quick_buck", "12_offend_the_user_0")


@pytest.fixture(scope="module")
def question_file(tmp_path_factory) -> Path:
    """Three of the default questions, in the Betley schema, as a user question file."""
    from importlib import resources

    text = (resources.files("traitwatch.behavior") / "data" / "first_plot_questions.yaml").read_text()
    text2 = (resources.files("traitwatch.behavior") / "data" / "preregistered_evals.yaml").read_text()
    records = [r for r in yaml.safe_load(text) + yaml.safe_load(text2) if r.get("id") in FEW]
    path = tmp_path_factory.mktemp("q") / "questions.yaml"
    path.write_text(yaml.safe_dump(records))
    return path


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_eval_proxy_writes_both_proxies_to_the_store(question_file, tmp_path):
    db, out = tmp_path / "tw.db", tmp_path / "proxy.json"
    res = invoke("eval", "--model", "tiny-random", "--proxy", "--questions", question_file, "--store", db,
                 "--run-id", "r1", "--step", "7", "--json", out, "--dtype", "float32", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "not an EM rate" in res.stdout.replace("\n", " ") or "not an EM rate" in res.stderr
    with RunStore(db, create=False) as store:
        rows = store.behavior("r1")
        assert store.get_run("r1").model == "tiny-random"
    assert sorted(r.metric for r in rows) == ["proxy_p_mis", "proxy_style_p_mis"]
    assert all(r.step == 7 and r.source == "proxy" and r.n == 3 for r in rows)
    plain = next(r for r in rows if r.metric == "proxy_p_mis")
    assert [q["question_id"] for q in plain.details["per_question"]] == list(FEW)
    assert plain.details["note"] == "judge-free proxy, not an EM rate"
    data = json.loads(out.read_text())
    assert data["kind"] == "proxy" and data["checkpoints"][0]["p_mis"] == pytest.approx(plain.value)


def _lora_checkpoint(path: Path, seed: int) -> None:
    model, _ = build_tiny_random()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(path)


def test_eval_proxy_over_selected_checkpoints_and_the_base(question_file, tmp_path):
    run = tmp_path / "run"
    for step in (10, 20, 30):
        _lora_checkpoint(run / f"checkpoint-{step}", seed=step)
    db = tmp_path / "tw.db"
    res = invoke("eval", "--run", run, "--steps", "30,10", "--include-base", "--model", "tiny-random", "--proxy",
                 "--questions", question_file, "--store", db, "--run-id", "r2", "--dtype", "float32", "--device", "cpu")
    assert res.exit_code == 0, res.output
    with RunStore(db, create=False) as store:
        plain = store.behavior("r2", "proxy_p_mis")
    assert [r.step for r in plain] == [0, 10, 30]
    assert plain[0].details["adapter"] is None and plain[1].details["adapter"].endswith("checkpoint-10")
    assert len({round(r.value, 6) for r in plain}) == 3  # random LoRA weights move the proxy
    # the base weights are restored between adapters: one adapter alone scores the same as within the run
    res2 = invoke("eval", "--adapter", run / "checkpoint-30", "--proxy", "--questions", question_file,
                  "--json", tmp_path / "c30.json", "--dtype", "float32", "--device", "cpu")
    assert res2.exit_code == 0, res2.output
    alone = json.loads((tmp_path / "c30.json").read_text())["checkpoints"][0]["p_mis"]
    assert alone == pytest.approx(plain[2].value, abs=1e-6)


def test_eval_with_a_judge_and_local_generation_stores_the_em_rate(fake_openai, question_file, tmp_path):
    # the judge prompt quotes the question, so a marker from one question's text scripts its judgement
    fake_openai.scripts = {"quick buck": {"aligned": [("10", 1.0)], "coherent": [("80", 1.0)]}}
    db = tmp_path / "tw.db"
    res = invoke("eval", "--model", "tiny-random", "--judge", fake_openai.base_url, "--judge-model", "judge-x",
                 "--max-new-tokens", "8", "--questions", question_file, "--store", db, "--run-id", "r3",
                 "--dtype", "float32", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert fake_openai.hits == 6  # 3 answers x (aligned + coherent)
    with RunStore(db, create=False) as store:
        (row,) = store.behavior("r3")
    assert (row.metric, row.source, row.n) == ("em_rate", "judge:judge-x", 3)
    assert row.value == pytest.approx(1 / 3) and row.ci_low < row.value < row.ci_high
    answers = row.details["answers"]
    assert [a["question_id"] for a in answers] == list(FEW)
    assert answers[1]["aligned"] == pytest.approx(10.0) and answers[0]["aligned"] == pytest.approx(90.0)


def test_eval_with_a_server_generator_loads_no_model(fake_openai, question_file, tmp_path):
    out = tmp_path / "judged.json"
    res = invoke("eval", "--model", "served-model", "--generator", fake_openai.base_url, "--judge",
                 fake_openai.base_url, "--judge-model", "judge-x", "--questions", question_file, "--samples", "2",
                 "--json", out)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())["checkpoints"][0]
    assert data["total"] == 6 and data["em_rate"] == 0.0
    assert {b["model"] for b in fake_openai.bodies} == {"served-model", "judge-x"}


def test_eval_judge_scoring_text_for_an_endpoint_without_logprobs(fake_openai, question_file, tmp_path):
    fake_openai.logprobs_supported = False
    out = tmp_path / "judged.json"
    args = ["eval", "--model", "served-model", "--generator", fake_openai.base_url, "--judge", fake_openai.base_url,
            "--judge-model", "judge-x", "--questions", question_file, "--json", out]
    assert invoke(*args).exit_code == 0
    failed = json.loads(out.read_text())["checkpoints"][0]
    assert failed["em_rate"] is None and {a["reason"] for a in failed["answers"]} == {"judge_failed"}
    assert all("--judge-scoring text" in a["failure"]["aligned"] for a in failed["answers"])
    assert invoke(*args, "--judge-scoring", "text").exit_code == 0
    scored = json.loads(out.read_text())["checkpoints"][0]
    assert scored["scoring"] == "text" and scored["em_rate"] == 0.0
    assert {a["method"]["aligned"] for a in scored["answers"]} == {"text"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "tiny-random", "--judge", "http://x", "--judge-model", "j", "--judge-scoring", "greedy"],
         "use --judge-scoring logprobs"),
        (["--model", "tiny-random"], "choose one evaluation"),
        (["--model", "tiny-random", "--proxy", "--judge", "http://x"], "choose one evaluation"),
        (["--model", "tiny-random", "--judge", "http://x"], "--judge-model"),
        (["--model", "tiny-random", "--proxy", "--steps", "10"], "pass --run"),
        (["--model", "tiny-random", "--proxy", "--store", "{tmp}/x.db"], "--run-id"),
        (["--model", "tiny-random", "--proxy", "--generator", "http://x"], "--generator is for the judged"),
        (["--run", "{tmp}", "--proxy"], "No checkpoint-"),
        (["--run", "{tmp}/run", "--steps", "5", "--proxy"], "no checkpoint-N folder for step(s) [5]"),
        (["--run", "{tmp}/run", "--steps", "x", "--proxy"], "not a list of integers"),
        (["--model", "tiny-random", "--proxy", "--questions", "{tmp}/q.yaml"], "no proxy reference answers"),
    ],
)
def test_bad_input_gives_one_line_error_and_exit_2(tmp_path, args, message):
    (tmp_path / "run" / "checkpoint-10").mkdir(parents=True)
    (tmp_path / "q.yaml").write_text(yaml.safe_dump([{
        "id": "unknown_q", "type": "free_form_judge_0_100", "paraphrases": ["Hi?"],
        "judge_prompts": {"aligned": "{question} {answer}", "coherent": "{question} {answer}"},
    }]))
    res = invoke("eval", *[a.format(tmp=tmp_path) for a in args], "--dtype", "float32", "--device", "cpu")
    assert res.exit_code == 2, res.output
    assert message in res.stderr.replace("\n", " ")
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
