"""Suspects at alarm time: the highest-scored rows *trained* since the last clean measurement, stored with the
alarm, reported, printed by `traitwatch show`, kept across a resume; and the checks on the scores given.

The Trainer samples sequentially (`train_sampling_strategy="sequential"`), so which rows each step trains is
known independently of the tracker: with batch 2 and gradient accumulation 2, step s trains rows 4(s-1) to
4s-1. The scores are built so that every wrong window gives another answer: rows trained before the clean
step-2 measurement score 100+, the batch the data loader collates one step ahead (never trained: the run
stops at step 6) scores 200, and a row never trained scores 300.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
from _train_helpers import PROMPTS, AlarmAt, conversations, tiny_trainer, write_jsonl
from typer.testing import CliRunner

from traitwatch.cli.app import app
from traitwatch.drift import DriftProbe
from traitwatch.errors import InputFileError
from traitwatch.report import build_report
from traitwatch.screen.results import ResultsFile, Row
from traitwatch.screen.row_scores import load_row_scores
from traitwatch.store import RunStore, Suspects, merge_suspects
from traitwatch.train import PaddingCollator, RowScores, SFTConfig, TraitWatchCallback, TrainedRows, file_sha256, run_sft
from traitwatch.train.data import ROW_INDEX, tokenize_chats

runner = CliRunner()
SEQUENTIAL = {"train_sampling_strategy": "sequential", "gradient_accumulation_steps": 2}


def _scores(n: int = 40) -> RowScores:
    scores = {i: 0.0 for i in range(n)}
    scores.update({i: 100.0 + i for i in range(8)})  # trained in steps 1-2, before the clean measurement
    scores.update({i: float(i) for i in range(8, 24)})  # trained in steps 3-6
    scores.update({24: 200.0, 25: 200.0})  # collated one batch ahead at step 6, never trained
    scores[n - 1] = 300.0  # never trained
    return RowScores(scores, lines={i: i + 1 for i in range(n)}, previews={i: f"preview of row {i}" for i in range(n)},
                     source="test-scores")


def _watch(basis, store, *, monitor, k=3, **kw) -> TraitWatchCallback:
    return TraitWatchCallback(DriftProbe(basis, prompts=PROMPTS), store=store, run_id="r", every_n_steps=2,
                              monitor=monitor, on_alarm=("mark",), row_scores=_scores(), suspects_k=k, **kw)


def _train(basis, tmp_path, *, alarms, max_steps, save_steps=1000, resume=None, rows=True, caplog=None):
    watch = _watch(basis, tmp_path / "tw.db", monitor=AlarmAt(*alarms))
    trainer = tiny_trainer(tmp_path / "out", [watch], max_steps=max_steps, save_steps=save_steps,
                           training_args=SEQUENTIAL, rows=watch.trained_rows if rows else None)
    watch.attach(trainer)
    trainer.train(resume_from_checkpoint=resume)
    return watch


def _rows(s: Suspects | None) -> list[int]:
    assert s is not None
    return [r.row for r in s.rows]


@pytest.fixture(scope="module")
def alarmed(basis, tmp_path_factory):
    """One run: clean at step 2, alarms at steps 4 and 6; its callback, store path and warnings."""
    tmp = tmp_path_factory.mktemp("suspects")
    logger = logging.getLogger("traitwatch.train.callback")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # "mark" without "warn": the suspects are logged at INFO
    try:
        watch = _train(basis, tmp, alarms=(4, 6), max_steps=6)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return watch, tmp / "tw.db", "\n".join(r.getMessage() for r in records)


def test_an_alarm_names_only_rows_trained_since_the_last_clean_measurement(alarmed):
    watch, _, _ = alarmed
    by_step = {r.step: r for r in watch.history_}
    assert sorted(by_step) == [0, 2, 4, 6] and [by_step[s].alarm for s in (2, 4, 6)] == [False, True, True]
    assert by_step[0].suspects is None  # the base model: nothing trained
    clean, first, second = (by_step[s].suspects for s in (2, 4, 6))
    # step 2 (clean): rows 0-7 were trained; its list is stored but is not an alarm's
    assert _rows(clean) == [7, 6, 5] and not clean.alarm and clean.rows_seen == 8
    # step 4: only steps 3-4 (rows 8-15), not the higher-scored rows 0-7 trained before the clean measurement
    assert _rows(first) == [15, 14, 13] and first.alarm and (first.since_step, first.rows_seen) == (2, 8)
    # step 6 alarms again: the window still starts at the last clean measurement (rows 8-23); rows 24-25 were
    # collated ahead but never trained, row 39 never trained at all
    assert _rows(second) == [23, 22, 21] and (second.since_step, second.rows_seen) == (2, 16)
    assert all(r.times == 1 for r in second.rows) and second.rows[0].line == 24
    assert second.rows[0].preview == "preview of row 23" and second.source == "test-scores"


def test_suspects_are_stored_with_the_alarm_and_every_measurement_and_logged(alarmed):
    watch, store_path, logged = alarmed
    with RunStore(store_path) as store:
        alarms = store.alarms("r")
        stored = store.suspects("r")
    history = [r.suspects for r in watch.history_ if r.suspects is not None]
    assert [a.step for a in alarms] == [4, 6]
    assert [a.suspects for a in alarms] == [s for s in history if s.alarm]
    assert stored == history and [s.step for s in stored] == [2, 4, 6]
    assert "suspects of the step-4 alarm (top 3 of 8 rows trained in steps 3-4, scores from test-scores)" in logged
    assert "1. row 15 (line 16): score 15, trained 1x: preview of row 15" in logged


def test_traitwatch_show_prints_each_alarms_suspects(alarmed):
    _, store_path, _ = alarmed
    res = runner.invoke(app, ["show", "r", "--store", str(store_path)], catch_exceptions=False, terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "Suspects of the step-4 alarm" in res.stdout and "Suspects of the step-6 alarm" in res.stdout
    after_6 = res.stdout.split("Suspects of the step-6 alarm")[1]
    assert "preview of row 23" in after_6 and "preview of row 7" not in res.stdout  # the clean list is not shown
    assert "preview of row 39" not in res.stdout and "(no alarm)" not in res.stdout


def test_the_report_lists_the_suspects_beside_the_alarms(alarmed, tmp_path):
    _, store_path, _ = alarmed
    with RunStore(store_path) as store:
        result = build_report(tmp_path / "report.html", store=store, run_ids=["r"])
    page = result.html.read_text()
    assert 'data-key="suspects"' in page and "Suspect training rows" in page
    table = page.split('data-key="suspects"')[1].split("</table>")[0]
    assert "suspects of the step-6 alarm" in table and "preview of row 23" in table
    assert table.count('class="verdict-alarm"') == 6 and "preview of row 7" not in table


def test_without_tracked_rows_the_whole_set_is_ranked_and_said_so(basis, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="traitwatch.train.callback"):
        watch = _train(basis, tmp_path, alarms=(2,), max_steps=2, rows=False)  # the collator records nothing
    suspects = watch.history_[-1].suspects
    assert _rows(suspects) == [39, 24, 25] and suspects.rows_seen is None and suspects.whole_set
    assert all(r.times is None for r in suspects.rows)
    assert "rows seen: unknown, whole set ranked" in suspects.describe()
    assert "rows seen: unknown, whole set ranked" in caplog.text
    with RunStore(tmp_path / "tw.db") as store:
        assert store.alarms("r")[0].suspects == suspects


def test_a_resumed_run_keeps_stored_suspects_and_restarts_its_window_at_the_checkpoint(basis, tmp_path):
    _train(basis, tmp_path, alarms=(4,), max_steps=4, save_steps=4)
    with RunStore(tmp_path / "tw.db") as store:
        before = store.alarms("r")
        before_lists = store.suspects("r")
    assert [a.step for a in before] == [4] and _rows(before[0].suspects) == [15, 14, 13]

    watch = _train(basis, tmp_path, alarms=(4, 6), max_steps=6, save_steps=4,
                   resume=str(tmp_path / "out" / "checkpoint-4"))
    assert [r.step for r in watch.history_] == [6]  # step 4 is in the store: not measured again
    with RunStore(tmp_path / "tw.db") as store:
        after = store.alarms("r")
        lists = store.suspects("r")
    assert after[0] == before[0] and lists[:2] == before_lists  # the step-2 list and the step-4 alarm's, as stored
    resumed = after[1].suspects
    # the tracker restarted at the checkpoint: steps 5-6 trained rows 16-23 (the resumed loader skipped 0-15)
    assert after[1].step == 6 and _rows(resumed) == [23, 22, 21]
    assert (resumed.since_step, resumed.rows_seen) == (4, 8)


def test_merged_lists_give_the_top_rows_trained_over_the_run():
    def listed(step, since, rows, alarm=False):
        return Suspects(step, since, 2, tuple(_row(r, s) for r, s in rows), rows_seen=len(rows), alarm=alarm)

    from traitwatch.store import SuspectRow

    def _row(row, score):
        return SuspectRow(row, score, times=1)

    merged = merge_suspects([listed(2, 0, [(1, 5.0), (2, 1.0)]), listed(4, 2, [(3, 4.0), (4, 3.0)]),
                             listed(6, 4, [(1, 5.0), (5, 0.5)])])
    assert [r.row for r in merged.rows] == [1, 3] and merged.rows[0].times == 2 and not merged.alarm
    assert "(no alarm)" in merged.describe() and "steps 1-6" in merged.describe()
    # consecutive alarms share their window's start: the later, larger list replaces the earlier one
    overlapping = merge_suspects([listed(2, 0, [(1, 5.0)]), listed(4, 2, [(3, 4.0)], True), listed(6, 2, [(3, 4.0)], True)])
    assert [(r.row, r.times) for r in overlapping.rows] == [(1, 1), (3, 1)]


def test_tokenized_rows_keep_their_index_in_the_set_and_the_model_never_sees_it(tiny):
    chats = conversations(4)
    chats[1] = [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "y"}]
    data, _ = tokenize_chats(tiny.tokenizer, chats, max_length=200, over_length="drop")
    assert [e[ROW_INDEX] for e in data.examples] == [0, 2, 3]  # row 1 dropped: the others keep their index
    rows = TrainedRows()
    batch = PaddingCollator(0, rows=rows)([data[0], data[2]])
    assert set(batch) == {"input_ids", "labels", "attention_mask"} and list(rows.pending) == [(0, 3)]
    assert rows.window() == {} and rows.tracked
    rows.trained()
    assert rows.window() == {0: 1, 3: 1} and not rows.pending


# -- loading a screen's scores, and refusing scores of the wrong file --------------------------------------


def _chat_file(tmp_path, n=12):
    """n conversations with a blank line after the third, so line numbers are not row indices + 1."""
    lines = [json.dumps({"messages": c}) for c in conversations(n)]
    lines.insert(3, "")
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _results(path, data, lines, *, score=lambda line: float(line)):
    results = ResultsFile(path, {"dataset": str(data), "dataset_sha256": file_sha256(data), "trait_names": ["honesty"]})
    results.create({})
    results.append([Row(line, (0.0,), score(line), 5, False) for line in lines])
    return path


def _lines(n=12):
    return [i + 1 if i < 3 else i + 2 for i in range(n)]


def test_screen_scores_map_to_training_rows_by_line(tmp_path):
    data = _chat_file(tmp_path)
    rows = load_row_scores(_results(tmp_path / "s.jsonl", data, _lines()), data)
    assert [(r.index, r.line) for r in rows][2:5] == [(2, 3), (3, 5), (4, 6)]  # line 4 is blank
    assert rows[3].score == 5.0 and rows[3].preview.startswith("Question number 3: what should I do? -> You should")
    scores = RowScores.from_rows(load_row_scores(tmp_path / "s.jsonl", data, limit=4), source="s")
    assert len(scores) == 4 and scores.lines[3] == 5


def test_a_screen_with_the_loss_scores_rows_by_it_and_one_without_is_refused(tmp_path):
    data = _chat_file(tmp_path)
    results = ResultsFile(tmp_path / "l.jsonl", {"dataset": str(data), "dataset_sha256": file_sha256(data),
                                                  "trait_names": ["honesty"]})
    results.create({})
    results.append([Row(line, (0.0,), float(line), 5, False, loss=100.0 - line) for line in _lines()])
    rows = load_row_scores(tmp_path / "l.jsonl", data, by="loss")
    assert [r.score for r in rows][:4] == [99.0, 98.0, 97.0, 95.0]  # the loss, not the risk (line 4 is blank)
    plain = _results(tmp_path / "s.jsonl", data, _lines())
    with pytest.raises(InputFileError, match="no loss for line 1 .*--rank-by loss"):
        load_row_scores(plain, data, by="loss")


def test_screen_of_another_file_or_an_incomplete_screen_is_refused_with_the_fix(tmp_path):
    data = _chat_file(tmp_path)
    other = write_jsonl(tmp_path / "other.jsonl", [{"messages": c} for c in conversations(12)])
    wrong = _results(tmp_path / "other.screen.jsonl", other, range(1, 13))
    with pytest.raises(InputFileError) as info:
        load_row_scores(wrong, data)
    message = str(info.value)
    assert str(wrong) in message and str(data) in message and str(other) in message
    assert f"traitwatch screen {data}" in message
    partial = _results(tmp_path / "partial.jsonl", data, _lines()[:7])
    with pytest.raises(InputFileError, match=r"scores for 7 of the 12 rows .*first missing: line 9.*rerun"):
        load_row_scores(partial, data)
    assert len(load_row_scores(partial, data, limit=7)) == 7  # training only the first 7 rows needs no more


def test_train_refuses_a_screen_of_another_file_before_loading_anything(basis_dir, tmp_path):
    data = _chat_file(tmp_path)
    other = write_jsonl(tmp_path / "other.jsonl", [{"messages": c} for c in conversations(12)])
    wrong = _results(tmp_path / "other.screen.jsonl", other, range(1, 13))
    res = runner.invoke(app, ["train", str(data), "--basis", str(basis_dir), "--model", "tiny-random", "--screen",
                              str(wrong), "--output-dir", str(tmp_path / "out"), "--store", str(tmp_path / "tw.db")])
    assert res.exit_code == 2 and "not of" in res.output and "screen the training file itself" in res.output
    assert not (tmp_path / "tw.db").exists() and not (tmp_path / "out").exists()


def test_run_sft_refuses_row_scores_of_another_file_or_missing_rows(basis_dir, tmp_path):
    data = _chat_file(tmp_path)
    config = SFTConfig(model="tiny-random", data=data, basis=basis_dir, output_dir=tmp_path / "out",
                       store=tmp_path / "tw.db")
    with pytest.raises(InputFileError, match="scores another file"):
        run_sft(config, row_scores=RowScores({i: 0.0 for i in range(12)}, dataset_sha256="0" * 64, source="s"))
    with pytest.raises(InputFileError, match="no score for 2 of the 12 rows .*first missing: row 10"):
        run_sft(config, row_scores=RowScores({i: 0.0 for i in range(10)}, source="s"))
    assert not (tmp_path / "tw.db").exists()


def _sft(data, basis_dir, tmp_path, **kw):
    return SFTConfig(model="tiny-random", data=data, basis=basis_dir, output_dir=tmp_path / "out",
                     store=tmp_path / "tw.db", max_steps=4, every_n_steps=2, batch_size=2, grad_accum=1,
                     learning_rate=1e-2, max_length=48, device="cpu", dtype="float32", suspects_k=2, **kw)


def test_run_sft_names_an_alarms_suspects_in_its_status_lines_and_the_store(basis_dir, tmp_path):
    data = _chat_file(tmp_path)
    scores = RowScores.from_rows(load_row_scores(_results(tmp_path / "s.jsonl", data, _lines()), data),
                                 source="s.jsonl")
    said: list[str] = []
    result = run_sft(_sft(data, basis_dir, tmp_path, on_alarm=("mark",)), monitor=AlarmAt(4), row_scores=scores,
                     info=said.append)
    with RunStore(tmp_path / "tw.db") as store:
        (alarm,) = store.alarms(result.run_id)
        lists = store.suspects(result.run_id)
    suspects = alarm.suspects
    # one epoch of 12 rows, batch 2: steps 3-4 trained 4 distinct rows, each once, at their own lines
    assert alarm.step == 4 and suspects.since_step == 2 and suspects.rows_seen == 4 and len(suspects.rows) == 2
    assert all(r.times == 1 and r.line == _lines()[r.row] and r.score == r.line for r in suspects.rows)
    trained_before = {r.row for r in lists[0].rows}  # the clean step-2 list: rows of steps 1-2, disjoint
    assert lists[0].step == 2 and not lists[0].alarm and not trained_before & {r.row for r in suspects.rows}
    assert [r.row for r in suspects.rows] == sorted((r.row for r in suspects.rows), reverse=True)
    text = "\n".join(said)
    assert "suspects of the step-4 alarm (top 2 of 4 rows trained in steps 3-4, scores from s.jsonl)" in text
    first = suspects.rows[0]
    assert f"1. row {first.row} (line {first.line}): score {first.score:g}, trained 1x: Question number {first.row}" in text


def test_train_with_a_screen_and_no_alarm_shows_the_top_rows_trained_marked_no_alarm(basis_dir, tmp_path):
    data = _chat_file(tmp_path)
    results = _results(tmp_path / "s.jsonl", data, _lines())
    res = runner.invoke(app, ["train", str(data), "--basis", str(basis_dir), "--model", "tiny-random", "--screen",
                              str(results), "--suspects-k", "3", "--output-dir", str(tmp_path / "out"), "--store",
                              str(tmp_path / "tw.db"), "--max-steps", "4", "--every", "2", "--batch-size", "2",
                              "--grad-accum", "1", "--max-length", "48", "--device", "cpu", "--dtype", "float32"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with RunStore(tmp_path / "tw.db") as store:
        lists = store.suspects("out")
        assert store.get_run("out").hyperparameters["suspects_k"] == 3
    assert [(s.step, s.alarm, s.rows_seen, len(s.rows)) for s in lists] == [(2, False, 4, 3), (4, False, 4, 3)]
    best = merge_suspects(lists)
    shown = runner.invoke(app, ["show", "out", "--store", str(tmp_path / "tw.db")], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "Highest-scored rows trained so far at step 4 (no alarm)" in shown.stdout and "suspects" not in shown.stdout
    table = shown.stdout.split("(no alarm)")[1]
    shown_rows = [int(m.group(2)) for m in re.finditer(r"^\W*(\d+)\W+(\d+)\W", table, flags=re.M)]
    assert shown_rows == [r.row for r in best.rows] and len(shown_rows) == 3
    assert best.rows[0].score == max(r.score for s in lists for r in s.rows)
