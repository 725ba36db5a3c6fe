"""TraitWatchCallback on a real (tiny) Trainer: cadence, logs, store, train mode, alarm actions."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from traitwatch.drift import DriftProbe
from traitwatch.errors import TraitwatchError
from traitwatch.store import RunStore
from traitwatch.train import DriftAlarmError, TraitWatchCallback

from _train_helpers import PROMPTS, tiny_trainer


class ModeSpy(TrainerCallback):
    """Registered after the drift callback: sees the model right after a measurement."""

    def __init__(self) -> None:
        self.training: dict[int, bool] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.training[state.global_step] = model.training


class LogSpy(TrainerCallback):
    """Registered *before* the drift callback, as report_to integrations are."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append((state.global_step, dict(logs or {})))


class ConstantMonitor:
    """A calibrated-monitor stand-in: predicts the same EM rate for any drift."""

    def __init__(self, value: float, threshold: float = 0.5) -> None:
        self.value, self.threshold = value, threshold
        self.calls: list[np.ndarray] = []

    def predict(self, X):
        X = np.asarray(X)
        self.calls.append(X)
        return np.full(X.shape[0], self.value)


def _watch(basis, store, run_id="r", **kw) -> TraitWatchCallback:
    return TraitWatchCallback(DriftProbe(basis, prompts=PROMPTS), store=store, run_id=run_id, **kw)


def test_measures_step0_every_n_and_final_into_store_and_logs(basis, tmp_path):
    store_path = tmp_path / "tw.db"
    watch, spy, logs = _watch(basis, store_path, every_n_steps=5), ModeSpy(), LogSpy()
    trainer = tiny_trainer(tmp_path / "out", [logs, watch, spy], max_steps=12)
    watch.attach(trainer)
    trainer.train()

    with RunStore(store_path) as store:
        ms = store.measurements("r")
        run = store.get_run("r")
    assert [m.step for m in ms] == [0, 5, 10, 12]
    assert run.status == "finished" and run.basis_fingerprint["layer"] == basis.layers[0]
    assert ms[0].drift_norm == 0.0 and ms[-1].drift_norm > 0  # anchored on the live model at step 0
    assert ms[0].per_prompt.shape == (len(PROMPTS), 7) and ms[0].extra["anchor"]["source"] == "measured"
    assert len(ms[0].extra["anchor"]["norms"]) == len(PROMPTS)

    history = trainer.state.log_history
    tw_steps = [h["step"] for h in history if "traitwatch/drift_norm" in h]
    assert tw_steps == [0, 5, 10, 12]
    for h in history:
        if "traitwatch/drift_norm" in h:
            stored = next(m for m in ms if m.step == h["step"])
            assert h["traitwatch/drift_norm"] == pytest.approx(stored.drift_norm)
            assert set(stored.drift) == {k.split("/", 1)[1] for k in h if k.startswith("traitwatch/")} - {"drift_norm"}
    # an integration registered before us still receives the drift through Trainer.log
    assert [s for s, log in logs.seen if "traitwatch/honesty" in log] == [0, 5, 10, 12]
    # the measurement put the model in eval mode and gave it back in train mode
    assert all(spy.training[s] for s in (5, 10, 12))


def test_measured_steps_keep_the_trainers_loss_logging_and_store_training_extras(basis, tmp_path):
    """Trainer.log resets should_log; a measurement at every step must not drop the loss logs."""
    store_path = tmp_path / "tw.db"
    watch = _watch(basis, store_path, every_n_steps=1)
    trainer = tiny_trainer(tmp_path / "out", [watch], max_steps=4)
    watch.attach(trainer)
    trainer.train()
    loss_steps = [h["step"] for h in trainer.state.log_history if "loss" in h]
    assert loss_steps == [1, 2, 3, 4]
    with RunStore(store_path) as store:
        ms = store.measurements("r", per_prompt=False)
    assert "loss" not in ms[0].extra and ms[0].extra["lora_norm"] == 0.0  # LoRA B starts at zero
    # the loss of the previous logged step (the Trainer logs a step's loss after on_step_end)
    logged = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    assert [m.extra["loss"] for m in ms[2:]] == pytest.approx([logged[1], logged[2], logged[3]])
    assert all(m.extra["lora_norm"] > 0 for m in ms[1:])
    assert len(ms[1].extra["mean_activation"]) == trainer.model.config.hidden_size


def test_lora_delta_norm_matches_the_merged_weight_change():
    from peft import LoraConfig, get_peft_model

    from traitwatch.models import build_tiny_random
    from traitwatch.train.callback import lora_delta_norm

    model, _ = build_tiny_random()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_()
    norm = lora_delta_norm(peft)
    merged = peft.merge_and_unload().state_dict()
    expected = sum(float((merged[k] - base[k]).pow(2).sum()) for k in base) ** 0.5
    assert norm == pytest.approx(expected, rel=1e-4)
    assert lora_delta_norm(build_tiny_random()[0]) is None


def test_measuring_does_not_change_training(basis, tmp_path):
    """Same seed with and without the callback: identical weights (measuring uses no RNG, no grads)."""
    plain = tiny_trainer(tmp_path / "a", [], max_steps=6)
    plain.train()
    watch = _watch(basis, None, every_n_steps=2)
    watched = tiny_trainer(tmp_path / "b", [watch], max_steps=6)
    watch.attach(watched)
    watched.train()
    a = {k: v for k, v in plain.model.named_parameters() if "lora" in k}
    b = dict(watched.model.named_parameters())
    assert a and all(torch.equal(v, b[k]) for k, v in a.items())
    assert [r.step for r in watch.history_] == [0, 2, 4, 6]


def test_needs_a_trainer_reference(basis, tmp_path):
    trainer = tiny_trainer(tmp_path / "out", [_watch(basis, None)], max_steps=2)
    with pytest.raises(TraitwatchError, match="attach"):
        trainer.train()


@pytest.mark.parametrize("actions", [("stop",), ("stop", "save"), ("mark",), ("save",), ("warn",), ("raise",)])
def test_alarm_actions(basis, tmp_path, caplog, actions):
    store_path, out = tmp_path / "tw.db", tmp_path / "out"
    monitor = ConstantMonitor(0.9, threshold=0.5)
    watch = _watch(basis, store_path, every_n_steps=5, monitor=monitor, on_alarm=actions)
    trainer = tiny_trainer(out, [watch], max_steps=12)
    watch.attach(trainer)
    with caplog.at_level(logging.WARNING, logger="traitwatch.train.callback"):
        if "raise" in actions:
            with pytest.raises(DriftAlarmError, match="step 5") as info:
                trainer.train()
            assert info.value.exit_code == 3 and info.value.step == 5
        else:
            trainer.train()
    with RunStore(store_path) as store:
        steps = [m.step for m in store.measurements("r")]
        alarms = store.alarms("r")
        status = store.get_run("r").status
        logged = store.measurements("r")[-1].extra
    # the monitor is never asked about step 0 (the base model, outside its calibration)
    assert len(monitor.calls) == len(steps) - 1 and logged["predicted_em"] == 0.9 and logged["alarm"] is True
    history = [h for h in trainer.state.log_history if "traitwatch/alarm" in h]
    assert history and all(h["traitwatch/alarm"] == 1.0 and h["traitwatch/predicted_em"] == 0.9 for h in history)
    stopped = "stop" in actions or "raise" in actions
    assert trainer.state.global_step == (5 if stopped else 12)
    assert steps == ([0, 5] if stopped else [0, 5, 10, 12])
    assert status == ("stopped" if stopped else "finished")
    if actions == ("warn",):
        assert alarms == [] and "drift alarm at step 5" in caplog.text
    else:
        assert [a.step for a in alarms] == steps[1:] and all(a.kind == "em_monitor" for a in alarms)
        assert alarms[0].value == 0.9 and alarms[0].threshold == 0.5
    saved = sorted(p.name for p in out.glob("checkpoint-*")) if out.exists() else []
    if "save" in actions:
        assert "checkpoint-5" in saved  # save_steps is 1000: only the alarm asked for it
    elif "raise" not in actions:
        assert "checkpoint-5" not in saved


def test_no_alarm_below_threshold(basis, tmp_path):
    watch = _watch(basis, tmp_path / "tw.db", every_n_steps=5, monitor=ConstantMonitor(0.1), on_alarm=("stop",))
    trainer = tiny_trainer(tmp_path / "out", [watch], max_steps=6)
    watch.attach(trainer)
    trainer.train()
    assert trainer.state.global_step == 6 and not watch.stopped_by_alarm_
    assert [r.alarm for r in watch.history_] == [False, False, False]


class StepAlarm:
    """A step-aware alarm stand-in: fires from step 10 on, whatever the drift; records its inputs."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def alarm(self, X):
        X = np.asarray(X)
        self.seen.append(X)
        return X[:, -1] >= 10


def test_a_step_aware_alarm_decides_instead_of_the_threshold(basis, tmp_path):
    monitor = ConstantMonitor(0.0)  # never above its threshold on its own
    monitor.step_aware = StepAlarm()
    watch = _watch(basis, tmp_path / "tw.db", every_n_steps=5, monitor=monitor, on_alarm=("mark",))
    trainer = tiny_trainer(tmp_path / "out", [watch], max_steps=12)
    watch.attach(trainer)
    trainer.train()
    assert [(r.step, r.alarm) for r in watch.history_] == [(0, False), (5, False), (10, True), (12, True)]
    seen = np.vstack(monitor.step_aware.seen)
    assert seen.shape == (3, 8) and seen[:, -1].tolist() == [5, 10, 12]  # drift columns, then the step
    assert np.allclose(seen[:, :7], [list(r.drift.values()) for r in watch.history_[1:]])
    with RunStore(tmp_path / "tw.db") as store:
        assert [a.step for a in store.alarms("r")] == [10, 12]


def test_bad_actions_and_monitor_are_refused(basis):
    with pytest.raises(ValueError, match="unknown alarm action"):
        _watch(basis, None, on_alarm=("explode",))
    with pytest.raises(TypeError, match="predict"):
        _watch(basis, None, monitor=object())


def _anchored_basis(basis, dtype):
    """The session basis with a step-0 anchor of the 8 test prompts measured on tiny-random in `dtype`."""
    import copy

    from traitwatch.models import build_tiny_random

    if dtype is None:
        return basis
    model, tok = build_tiny_random(dtype=dtype)
    anchored = copy.copy(basis)
    anchored.anchor = DriftProbe(basis, prompts=PROMPTS).fit_anchor(model, tok).anchor_
    return anchored


def _train_then_resume(basis, out, *, first_steps, last_steps, lora=True):
    """A run of `first_steps` (checkpoint at its end), then a new callback on a Trainer resuming from it.

    No store: the resumed callback must find its anchor elsewhere. Returns (first, second, resume).
    """
    kw = {"save_steps": first_steps, "lora": lora, **({} if lora else {"lr": 1e-3})}
    first = _watch(basis, None, every_n_steps=2)
    trainer = tiny_trainer(out, [first], max_steps=first_steps, **kw)
    first.attach(trainer)
    trainer.train()
    second = _watch(basis, None, every_n_steps=2)
    resumed = tiny_trainer(out, [second], max_steps=last_steps, **kw)
    second.attach(resumed)
    return first, second, lambda: resumed.train(resume_from_checkpoint=str(out / f"checkpoint-{first_steps}"))


@pytest.mark.parametrize("anchor_dtype", [None, torch.bfloat16], ids=["no-basis-anchor", "bf16-basis-anchor"])
def test_resumed_lora_run_without_a_fitting_anchor_uses_the_adapter_disabled_base(basis, tmp_path, anchor_dtype):
    """Without a stored anchor, and with no basis anchor or one measured in bf16 (the model runs in fp32)."""
    first, second, resume = _train_then_resume(_anchored_basis(basis, anchor_dtype), tmp_path / "out",
                                               first_steps=4, last_steps=6)
    resume()
    assert second.anchor_source_ == "adapter disabled" and second.probe_.anchor_.precision == ("float32", "cpu")
    torch.testing.assert_close(second.probe_.anchor_.projections, first.probe_.anchor_.projections, atol=1e-5, rtol=0)
    # no store says step 4 was recorded, so the checkpoint's step is measured on resume: the same model
    # (checkpoint-4) against the same anchor gives the first run's step-4 drift, not zero
    assert [r.step for r in second.history_] == [4, 6]
    assert second.history_[0].drift == pytest.approx(first.history_[-1].drift, abs=1e-5)
    assert second.history_[0].drift_norm > 0.01


def test_resumed_full_finetune_without_any_anchor_is_refused(basis, tmp_path):
    from traitwatch.train import AnchorError

    _, _, resume = _train_then_resume(basis, tmp_path / "out", first_steps=2, last_steps=4, lora=False)
    with pytest.raises(AnchorError, match="resumed at step 2"):
        resume()


def test_resumed_full_finetune_with_an_anchor_of_another_dtype_is_refused_with_the_fix(basis, tmp_path):
    from traitwatch.train import AnchorError

    _, _, resume = _train_then_resume(_anchored_basis(basis, torch.bfloat16), tmp_path / "out",
                                      first_steps=2, last_steps=4, lora=False)
    with pytest.raises(AnchorError) as info:
        resume()
    message = str(info.value)
    assert "the basis anchor (bfloat16 on cpu)" in message and "(float32 on cpu)" in message
    assert "fit_anchor(base_model, tokenizer)" in message and "--dtype float32" in message


def test_run_id_of_another_model_is_refused_before_training(basis, tmp_path):
    from traitwatch.store import RunMismatchError

    with RunStore(tmp_path / "tw.db") as store:
        store.start_run("r", model="some-other-model")
    watch = _watch(basis, tmp_path / "tw.db", model_name="tiny-random")
    trainer = tiny_trainer(tmp_path / "out", [watch], max_steps=2)
    watch.attach(trainer)
    with pytest.raises(RunMismatchError, match="some-other-model"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_two_line_setup_from_a_basis_folder(basis_dir, tmp_path):
    trainer = tiny_trainer(tmp_path / "out", [], max_steps=4)
    watch = TraitWatchCallback.from_basis(basis_dir, store=tmp_path / "tw.db", run_id="two-lines", every_n_steps=2)
    watch.attach(trainer)
    trainer.train()
    with RunStore(tmp_path / "tw.db", create=False) as st:
        assert [m.step for m in st.measurements("two-lines", per_prompt=False)] == [0, 2, 4]
    assert any("traitwatch/drift_norm" in row for row in trainer.state.log_history)


def test_from_basis_loads_a_monitor_of_this_basis_and_refuses_another(basis_dir, tmp_path):
    from traitwatch.basis import TraitBasis
    from traitwatch.errors import BasisMismatchError
    from traitwatch.monitor import DriftMonitor, save_monitor
    from traitwatch.train import basis_fingerprint

    basis = TraitBasis.load(basis_dir)
    rng = np.random.default_rng(0)
    fitted = DriftMonitor(threshold=0.05).fit(rng.normal(size=(40, 7)), rng.uniform(size=40))
    ours = save_monitor(fitted, tmp_path / "ours.json", fingerprint=basis_fingerprint(DriftProbe(basis)),
                        trait_names=basis.trait_names, training_run_ids=["a"])
    other = save_monitor(fitted, tmp_path / "other.json", fingerprint={"name": "synthetic"},
                         trait_names=basis.trait_names, training_run_ids=["a"])
    watch = TraitWatchCallback.from_basis(basis_dir, monitor=ours)
    assert watch.monitor is not None and watch.monitor.threshold == 0.05
    with pytest.raises(BasisMismatchError, match="another basis"):
        TraitWatchCallback.from_basis(basis_dir, monitor=other)


def test_a_basis_anchor_of_another_dtype_is_replaced_by_the_live_base(basis, tmp_path, caplog):
    bf16 = _anchored_basis(basis, torch.bfloat16)
    watch = _watch(bf16, tmp_path / "tw.db", every_n_steps=2)
    trainer = tiny_trainer(tmp_path / "out", [watch], max_steps=2)  # fp32
    watch.attach(trainer)
    with caplog.at_level(logging.WARNING, logger="traitwatch.train.callback"):
        trainer.train()
    assert watch.anchor_source_ == "measured" and watch.probe_.anchor_.precision == ("float32", "cpu")
    assert "the basis anchor (bfloat16 on cpu)" in caplog.text
    assert watch.history_[0].drift_norm == 0.0  # the fp32 base against itself
    with RunStore(tmp_path / "tw.db") as store:
        stored = store.measurements("r")[0].extra["anchor"]
    assert (stored["source"], stored["dtype"], stored["device"]) == ("measured", "float32", "cpu")
    # what using the bf16 anchor would have reported at step 0: precision noise as drift
    live = DriftProbe(bf16, prompts=PROMPTS)
    live.anchor_ = bf16.anchor
    fp32_model = tiny_trainer(tmp_path / "ref", [], max_steps=1).model
    assert live.measure(fp32_model, trainer.processing_class).norm > 1e-5

    fits = _watch(_anchored_basis(basis, torch.float32), None, every_n_steps=2)
    trainer = tiny_trainer(tmp_path / "out2", [fits], max_steps=2)
    fits.attach(trainer)
    trainer.train()
    assert fits.anchor_source_ == "basis"


class StateSpy(TrainerCallback):
    """Registered after the drift callback: the model's training state right after each measured step."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[bool, bool, bool]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.seen[state.global_step] = (model.training, model.is_gradient_checkpointing, model.config.use_cache)


def _without_cache(model):
    model.config.use_cache = False  # what users set for gradient checkpointing
    return model


def test_gradient_checkpointing_model_is_measured_and_keeps_its_training_state(basis, tmp_path):
    plain = _watch(basis, None, every_n_steps=2)
    trainer = tiny_trainer(tmp_path / "plain", [plain], max_steps=4)
    plain.attach(trainer)
    trainer.train()

    watch, spy = _watch(basis, None, every_n_steps=2), StateSpy()
    trainer = tiny_trainer(tmp_path / "gc", [watch, spy], max_steps=4, wrap=_without_cache,
                           training_args={"gradient_checkpointing": True})
    watch.attach(trainer)
    trainer.train()
    # measured at the same steps to the same drift (checkpointing recomputes the same activations)
    assert [r.step for r in watch.history_] == [0, 2, 4] and watch.history_[-1].drift_norm > 0.01
    for a, b in zip(plain.history_, watch.history_, strict=True):
        assert b.drift == pytest.approx(a.drift, abs=1e-6)
    # after each measurement: train mode, checkpointing still on, the cache still off for training
    assert spy.seen[2] == spy.seen[4] == (True, True, False)


@pytest.mark.parametrize("how", ["trainer-torch_compile", "user-torch.compile"])
def test_compiled_model_is_measured_without_recompiling_it(basis, tmp_path, how):
    """Dynamo's `eager` backend: graph capture and guards (what hooks could disturb) without code generation."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    options = ({"training_args": {"torch_compile": True, "torch_compile_backend": "eager"}} if how.startswith("trainer")
               else {"wrap": lambda model: torch.compile(model, backend="eager")})
    eager = _watch(basis, None, every_n_steps=2)
    trainer = tiny_trainer(tmp_path / "eager", [eager], max_steps=4)
    eager.attach(trainer)
    trainer.train()

    torch._dynamo.reset()  # both runs compile from scratch: their compilations can be compared
    counters.clear()
    tiny_trainer(tmp_path / "unwatched", [], max_steps=4, **options).train()
    graphs = dict(counters["stats"])
    torch._dynamo.reset()
    counters.clear()
    watch = _watch(basis, None, every_n_steps=2)
    trainer = tiny_trainer(tmp_path / "compiled", [watch], max_steps=4, **options)
    watch.attach(trainer)
    trainer.train()
    assert type(trainer.model_wrapped).__name__ == "OptimizedModule"
    assert graphs["unique_graphs"] >= 1 and dict(counters["stats"]) == graphs  # measuring added no (re)compilation
    for a, b in zip(eager.history_, watch.history_, strict=True):
        assert (b.step, b.drift) == (a.step, pytest.approx(a.drift, abs=1e-6))


class _FailingStore(RunStore):
    """A real store whose measurement write fails from step `fail_at` on, as a full or lost disk would."""

    fail_at = 5

    def add_measurement(self, run_id, step, *args, **kwargs):
        if step >= self.fail_at:
            import sqlite3

            raise sqlite3.OperationalError("disk I/O error")
        return super().add_measurement(run_id, step, *args, **kwargs)


def test_a_measurement_that_cannot_be_stored_stops_the_run_loudly(basis, tmp_path):
    from traitwatch.store import StoreWriteError

    with _FailingStore(tmp_path / "tw.db") as store:
        watch = _watch(basis, store, every_n_steps=5)
        trainer = tiny_trainer(tmp_path / "out", [watch], max_steps=12)
        watch.attach(trainer)
        with pytest.raises(StoreWriteError) as info:
            trainer.train()
        assert trainer.state.global_step == 5  # stopped at the failed write, not trained on past it
        assert "step-5 measurement" in str(info.value) and str(store.path) in str(info.value)
        assert "disk I/O error" in str(info.value) and "resume" in str(info.value)
    with RunStore(tmp_path / "tw.db") as again:
        assert [m.step for m in again.measurements("r")] == [0]
        assert again.get_run("r").status != "finished"  # never reported as done with a gap


def test_on_store_error_log_keeps_training(basis, tmp_path, caplog):
    with _FailingStore(tmp_path / "tw.db") as store:
        watch = _watch(basis, store, every_n_steps=5, on_store_error="log")
        trainer = tiny_trainer(tmp_path / "out", [watch], max_steps=12)
        watch.attach(trainer)
        with caplog.at_level(logging.ERROR, logger="traitwatch.train.callback"):
            trainer.train()
        assert trainer.state.global_step == 12
        assert [e.split(":")[0] for e in watch.store_errors_] == ["the step-5 measurement", "the step-10 measurement",
                                                                  "the step-12 measurement"]
        assert "could not store the step-5 measurement" in caplog.text
    with pytest.raises(ValueError, match="on_store_error"):
        _watch(basis, None, on_store_error="ignore")
