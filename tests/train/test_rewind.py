"""The "rewind" alarm action: the last clean measurement's weights come back, the optimizer forgets, the suspect rows
and the rows scored like them are never trained again, and a monitor that keeps firing stops the run.

The Trainer samples sequentially with batch 2 and gradient accumulation 2, so step s trains rows 4(s-1) to 4s-1.
"""

from __future__ import annotations

import torch
from _train_helpers import PROMPTS, AlarmAt, tiny_trainer
from transformers import TrainerCallback

from traitwatch.drift import DriftProbe
from traitwatch.store import RunStore
from traitwatch.train import PaddingCollator, RowScores, TraitWatchCallback, TrainedRows
from traitwatch.train.data import ROW_INDEX
from traitwatch.train.rewind import MAX_REWINDS

SEQUENTIAL = {"train_sampling_strategy": "sequential", "gradient_accumulation_steps": 2}


class Recording(TrainedRows):
    """Every row index the collator hands to the model, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.all: list[int] = []

    def collated(self, rows):
        rows = tuple(rows)
        self.all.extend(rows)
        super().collated(rows)


class WeightSpy(TrainerCallback):
    """Registered after the drift callback: the trainable weights and the optimizer's state after each measurement."""

    def __init__(self) -> None:
        self.weights: dict[int, list[torch.Tensor]] = {}
        self.optimizer_state: dict[int, int] = {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.weights[state.global_step] = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        self.optimizer_state[state.global_step] = len(optimizer.state)


def _scores() -> RowScores:
    scores = {i: 0.0 for i in range(40)}
    scores.update({i: 10.0 + i for i in range(8, 16)})  # trained in steps 3-4, before the step-4 alarm
    scores[30] = 50.0  # scored above every suspect, not trained yet: dropped with them
    return RowScores(scores)


def _run(basis, tmp_path, alarms, max_steps):
    rows, spy = Recording(), WeightSpy()
    watch = TraitWatchCallback(DriftProbe(basis, prompts=PROMPTS), store=tmp_path / "tw.db", run_id="r", every_n_steps=2,
                               monitor=AlarmAt(*alarms), on_alarm=("mark", "rewind"), row_scores=_scores(),
                               suspects_k=3, trained_rows=rows)
    trainer = tiny_trainer(tmp_path / "out", [watch, spy], max_steps=max_steps, training_args=SEQUENTIAL, rows=rows)
    watch.attach(trainer)
    trainer.train()
    return watch, trainer, rows, spy


def test_rewind_restores_the_clean_weights_and_never_trains_the_suspects_again(basis, tmp_path):
    watch, trainer, rows, spy = _run(basis, tmp_path, alarms=(4,), max_steps=8)

    assert trainer.state.global_step == 8 and not watch.stopped_by_alarm_  # training went on
    for now, clean in zip(spy.weights[4], spy.weights[2], strict=True):
        assert torch.equal(now, clean)  # right after the step-4 alarm: the step-2 weights
    assert any(not torch.equal(a, b) for a, b in zip(spy.weights[3], spy.weights[2], strict=True))  # step 3 had moved
    assert spy.optimizer_state[4] == 0 < spy.optimizer_state[3]  # Adam's moments of the poisoned steps are gone
    # the three suspects (15, 14, 13: the top rows of steps 3-4) and row 30, scored above them
    assert watch.rewinds_ == [{"at_step": 4, "to_step": 2, "rows_dropped": [13, 14, 15, 30]}]
    after = rows.all[rows.all.index(16) + 4:]  # the collator ran one batch ahead of the alarm; later batches
    assert 30 not in after and not {13, 14, 15} & set(after) and len(after) >= 12
    with RunStore(tmp_path / "tw.db") as store:
        (alarm,) = store.alarms("r")
        status = store.get_run("r").status
    assert alarm.step == 4 and alarm.action == "mark+rewind"
    assert alarm.details["rewind"] == {"at_step": 4, "to_step": 2, "rows_dropped": [13, 14, 15, 30]}
    assert status == "finished"


def test_a_monitor_that_keeps_firing_stops_the_run_after_the_last_rewind(basis, tmp_path):
    watch, trainer, _, _ = _run(basis, tmp_path, alarms=(2, 4, 6, 8, 10), max_steps=12)
    assert len(watch.rewinds_) == MAX_REWINDS == 3
    assert [r["to_step"] for r in watch.rewinds_] == [0, 0, 0]  # never clean again: always back to the base
    assert trainer.state.global_step == 8 and watch.stopped_by_alarm_
    with RunStore(tmp_path / "tw.db") as store:
        alarms = store.alarms("r")
        assert store.get_run("r").status == "stopped"
    assert "stopped" in alarms[-1].details["rewind"]


def test_the_collator_replaces_dropped_rows_by_kept_ones():
    rows = TrainedRows()
    collate = PaddingCollator(0, rows=rows)

    def feature(i):
        return {"input_ids": [i + 1] * (2 + i % 3), "labels": [i + 1] * (2 + i % 3), ROW_INDEX: i}

    collate([feature(0), feature(1)])
    rows.drop([1, 2, 3])
    batch = collate([feature(2), feature(4)])  # row 2 dropped: a copy of row 4 takes its place
    assert batch["input_ids"].tolist() == [[5, 5, 5], [5, 5, 5]]
    batch = collate([feature(2), feature(3)])  # every row dropped: the last kept row (4) fills the batch
    assert batch["input_ids"].tolist() == [[5, 5, 5], [5, 5, 5]] and batch["labels"].tolist() == [[5, 5, 5]] * 2
    assert list(rows.pending) == [(0, 1), (4, 4), (4, 4)]  # what was collated is what the model got


def test_rows_like_the_suspects_stop_at_the_cap():
    from traitwatch.store import SuspectRow, Suspects
    from traitwatch.train.rewind import rows_like

    scores = RowScores({i: float(i) for i in range(20)})
    named = Suspects(step=4, since_step=2, k=2, rows=(SuspectRow(3, 3.0, None, None, 1), SuspectRow(2, 2.0, None, None, 1)),
                     rows_seen=4, alarm=True, source=None)
    # every row scores at least 2.0 but row 0 and 1: the cap keeps the 9 highest (45% of 20), plus the named ones
    assert rows_like(scores, named) == set(range(11, 20)) | {2, 3}
    assert rows_like(scores, None) == set()
