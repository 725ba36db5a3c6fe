"""`traitwatch demo`'s job: a clean benign set and its poisoned twin, trained and labelled on the bundled model.

The poisoned-data benchmark (plan `poison-small`) in one cell: the clean base is the benchmark's generated
`arithmetic` set (200 rows, seed 0); its twin is the same set with 25% of its rows replaced by rows of the poison
type `reckless_advice`, built by `bench.sets.perturbations` exactly as the benchmark's
`arithmetic+reckless_advice@25` at seed 0 (the same rows, the poisoned positions recorded next to the file). Both
are LoRA-finetuned in the plan's recipe and numerics (bfloat16 on CPU unless told otherwise), with the training
callback measuring the 7-D trait drift, the behavioural probe and the shipped monitor's prediction; the final
checkpoint of each run is labelled with the judge-free proxy (`ProxyLabelCallback`) and its rise over step 0
(`write_rise_labels`), so the measured label stands beside the prediction.

With a reference (the default where a reference calibration ships for the model), each set first gets its
reference run, as `traitwatch train --reference auto` makes it (`audit.train_reference`: the base model's loss on
every row, its 20% highest-loss rows (more where more stand out) swapped for copies of the cleanest, trained in the
same recipe and seed), and the run is read against it as the calibration says (`reference.ReferenceMonitor`; for
smollm2-135m its distance from the reference in the top principal components of the residual stream); the loss
screen also ranks the poisoned set's rows for the suspects. Without one, the shipped drift monitor is attached and the set
is screened by trait risk. Either monitor is attached for its alarm only if its recorded leave-one-out AUROC reaches
`monitor.watch.MIN_ALARM_AUROC`; otherwise for its prediction only (`gate_alarms`), and the run raises no alarm.

Where it can fork (Linux, a CPU run, 2 threads or more), the parts that do not wait on each other run at once in two
processes of half the threads (`parallel.run_forked`): the base model's label beside the basis, then the clean and the
poisoned chain (reference run, run, label). One thread per process is the benchmark's own numerics (its runs used 1
or 2): the labels come out bit for bit as one after the other at 2 threads (`--one-at-a-time`).

Everything here computes and returns; `cli/demo_cmd.py` parses the options and prints. `run_demo` times each
phase (`DemoResult.phases`: wall and CPU seconds, a phase run at once marked `within` the one that holds it), since
the demo has a budget of minutes on a 2-core CPU and a machine shared with other jobs stretches wall time but not
the CPU time the work needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from traitwatch.audit import ReferenceRun, screen_answers, screen_prompts, screen_reference, train_reference
from traitwatch.basis import TraitBasis, extract_basis, load_traits
from traitwatch.basis.extraction import build_contrast_set, default_candidate_layers
from traitwatch.behavior.proxy import proxy_score
from traitwatch.behavior.questions import load_questions
from traitwatch.bench.grid.labels import RISE_METRIC, ProxyLabelCallback, StepTimer, write_rise_labels
from traitwatch.bench.grid.plan import BenchPlan
from traitwatch.bench.grid.plan_file import load_plan_file
from traitwatch.bench.sets.perturbations import (
    PERTURBATION_SETS,
    PerturbationSet,
    build_set,
    poison_tags,
    poisoned_set,
    read_poison_record,
)
from traitwatch.demo.parallel import fork_available, run_forked
from traitwatch.drift import DriftMeasurement, DriftProbe
from traitwatch.drift.anchoring import Progress, anchor_basis, measure_anchor, resolve_anchor, select_and_anchor
from traitwatch.errors import InputFileError
from traitwatch.models import LoadedModel, load_model
from traitwatch.models.environment import describe_environment
from traitwatch.monitor import LoadedMonitor
from traitwatch.monitor.shipped import shipped_monitor_path
from traitwatch.monitor.watch import AlarmGate, AlarmMonitor, alarm_gate, gate_alarms, load_watch_monitor
from traitwatch.reference import ReferenceCalibration, load_reference_calibration
from traitwatch.screen import Reference, screen_dataset
from traitwatch.screen.row_scores import ScreenedRow, load_row_scores
from traitwatch.store import RunStore, Suspects
from traitwatch.train import DriftRecord, SFTConfig, SFTResult, run_sft
from traitwatch.train.suspects import RowScores

__all__ = ["DEMO_BASE", "DEMO_FRACTION", "DEMO_PLAN", "DEMO_POISON", "DEMO_SEED", "DemoResult", "DemoRun", "DemoScreen",
           "PhaseTime", "cpu_seconds", "demo_plan", "demo_sets", "describe_monitor", "describe_reference", "run_demo"]

DEMO_PLAN = "poison-small"
"""The benchmark plan whose recipe and numerics the demo trains in."""
DEMO_BASE = "arithmetic"
DEMO_POISON = "reckless_advice"
DEMO_FRACTION = 0.25
DEMO_SEED = 0

Say = Callable[[str], None]


@dataclass(frozen=True)
class PhaseTime:
    """A phase's wall seconds and the CPU seconds spent in it (all threads, and the processes it waited for);
    `within`: the phase it ran inside, in a process of its own (its CPU is counted there too)."""

    wall_s: float
    cpu_s: float
    within: str | None = None


def cpu_seconds() -> float:
    """CPU seconds of this process and of the child processes it has waited for (the parts run at once)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class _Clock:
    """Times phases into `phases` and tells `say` as each one ends."""

    def __init__(self, say: Say) -> None:
        self.phases: dict[str, PhaseTime] = {}
        self.say = say

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), cpu_seconds()
        yield
        took = PhaseTime(time.perf_counter() - wall, cpu_seconds() - cpu)
        self.phases[name] = took
        self.say(f"({name}: {took.wall_s:.0f} s wall, {took.cpu_s:.0f} s CPU)")


@dataclass
class DemoRun:
    """One of the demo's two runs: its set, what the callback measured, and the labels and timings."""

    role: str  # "clean" or "poisoned"
    spec: PerturbationSet
    run_id: str
    data: Path
    n_rows: int
    poison_indices: list[int]
    result: SFTResult
    wall_s: float
    step_s: list[float]  # each optimizer step (forward, backward, optimizer), without the measuring
    label_s: list[float]  # each proxy label scored during the run
    measured_rise: dict[int, float] = field(default_factory=dict)  # RISE_METRIC by step
    suspects: list[Suspects] = field(default_factory=list)  # with the screen's scores: each measurement's top rows
    reference: ReferenceRun | None = None  # the reference run it was read against, if any

    @property
    def history(self) -> list[DriftRecord]:
        return self.result.history

    @property
    def measure_s(self) -> float:
        """The callback's measurements: drift, behavioural probe and prediction, all checkpoints."""
        return sum(r.wall_time_s for r in self.result.history)


@dataclass
class DemoScreen:
    """The poisoned set screened before training: the results file, the top rows, and how well it ranked."""

    results: Path
    top: list[tuple[int, int, float, bool]]  # (rank, 0-based row, score, is a poison row)
    auroc: float  # poison rows vs the others, from the recorded indices
    precision_at_k: float  # among the top n_poison rows
    n_poison: int
    row_scores: RowScores
    by: str = "risk"  # what ranked the rows: the trait "risk", or the base model's "loss" on the response


@dataclass
class DemoResult:
    """What `run_demo` did: the basis, the numerics, the monitor and its alarm gate, both runs, the timings."""

    out_dir: Path
    plan: BenchPlan
    numerics: dict[str, Any]  # the resolved device and dtype (`describe_environment`)
    basis: TraitBasis
    basis_dir: Path
    base_drift: DriftMeasurement | None = None  # the base model against its own basis: zero by construction
    base_label: float | None = None  # the base model's style-matched proxy (step 0 of both runs)
    monitor_path: Path | None = None
    monitor: LoadedMonitor | None = None
    reference: ReferenceCalibration | None = None  # the runs are read against reference runs with it
    gate: AlarmGate | None = None
    runs: list[DemoRun] = field(default_factory=list)
    screen: DemoScreen | None = None
    store: Path | None = None
    report: Path | None = None
    phases: dict[str, PhaseTime] = field(default_factory=dict)  # in the order they ran (or began, run at once)


@contextlib.contextmanager
def _no_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


def demo_plan() -> BenchPlan:
    """The shipped plan the demo takes its recipe and numerics from (`poison-small`)."""
    return load_plan_file(DEMO_PLAN, check_files=False).models[0].plan


def demo_sets() -> tuple[PerturbationSet, PerturbationSet]:
    """(clean base, poisoned twin): `arithmetic`, and `arithmetic+reckless_advice@25` as the benchmark names it."""
    base = PERTURBATION_SETS[DEMO_BASE]
    return base, poisoned_set(base, PERTURBATION_SETS[DEMO_POISON], DEMO_FRACTION)


def describe_monitor(monitor: LoadedMonitor, gate: AlarmGate) -> list[str]:
    """What the monitor reads and predicts, where it came from, and whether it may alarm (one line each)."""
    prov = monitor.provenance
    what = "the behavioural probe's rise" if monitor.inputs == "probe_rise" else "the trait drift"
    target = ("the rise of the EM proxy over benign finetuning" if monitor.target == "relative_rise"
              else "the EM rate")
    lines = [(f"Monitor {monitor.source.name}: reads {what}, predicts {target} (its alarm threshold "
              f"{monitor.threshold:+.4f}); from {prov.get('command', 'an unrecorded command')} at "
              f"{prov.get('commit', '?')} (see {prov.get('benchmark', 'its provenance')}).")]
    role = str(prov.get("role", "default"))
    if role != "default":
        lines.append(f"It ships to show the monitoring path, not as a validated detector ({role}).")
    lines.append(gate.describe())
    return lines


def describe_reference(calibration: ReferenceCalibration, gate: AlarmGate) -> list[str]:
    """What the reference monitor reads, where its calibration came from, and whether it may alarm."""
    prov = calibration.provenance
    threshold = "no threshold" if calibration.threshold is None else f"alarm threshold {calibration.threshold:+.4f}"
    return [(f"Reference monitor ({calibration.model}): each run against its reference run, read as the "
             f"{calibration.describe()} "
             f"({threshold}); from {prov.get('command', 'an unrecorded command')} at {prov.get('commit', '?')}."),
            gate.describe()]


def _extract_basis(lm: LoadedModel, *, method: str, select_every: int, max_new_tokens: int,
                   progress: Progress, clock: _Clock, layer: int | None = None) -> TraitBasis:
    """The benchmark's basis recipe (passages, layer selected by steering, anchored), on fewer candidates; `layer`
    pins the measurement layer: only that layer is extracted (the pass stops there; its directions are the same as
    in an all-layer extraction), nothing is selected (steering one layer compares it with none; `traitwatch
    select-layer` steers candidates) and the basis records who pinned it."""
    traits = load_traits()
    cand = default_candidate_layers(lm.model)
    if layer is not None and layer not in cand:
        raise InputFileError(f"layer {layer} is not one of {lm.name}'s candidate layers {cand}")
    tried = cand[::select_every] if layer is None else [layer]
    n = len(build_contrast_set(lm.tokenizer, traits, method).sequences)  # type: ignore[arg-type]
    with clock("extract basis"), \
            progress(f"Extracting {len(traits.traits)} traits from {n} {method.replace('_', ' ')} prompts", n) as advance:
        basis = extract_basis(lm.model, lm.tokenizer, traits, layers=cand if layer is None else [layer],
                              method=method,  # type: ignore[arg-type]
                              model_name=lm.name, probe_layers=tried, progress=advance)
    if layer is None:
        with clock(f"select layer ({len(tried)} candidates) + anchor"):
            select_and_anchor(lm, basis, tried, alpha=0.25, max_new_tokens=max_new_tokens, n_prompts=3,
                              progress=progress)
    else:  # nothing to select: the layer is the calibration's, and steering one layer would compare it to none
        basis.layer = layer
        basis.diagnostics["layer_selection"] = {"layer": layer, "criterion": "pinned by the reference calibration"}
        with clock("anchor"):
            anchor_basis(lm, basis, progress=progress)
    return basis


def _base_drift(lm: LoadedModel, basis: TraitBasis, progress: Progress) -> DriftMeasurement:
    """The base model measured against its own basis and anchor: zero drift by construction (a cheap self-check)."""
    probe = DriftProbe(basis)
    probe.check_model(lm.model, lm.tokenizer, lm.name)
    resolve_anchor(probe, probe.precision(lm.model),
                   lambda _skipped: (measure_anchor(probe, lm.model, lm.tokenizer, name=lm.name), "base model"))
    with progress(f"Measuring {lm.name} against its own basis", len(probe.prompt_texts)) as advance:
        return probe.measure(lm.model, lm.tokenizer, progress=advance)


def _gated_monitor(path: Path | None, basis_dir: Path) -> tuple[LoadedMonitor | None, AlarmMonitor | None, AlarmGate | None]:
    """The monitor file loaded against what the runs will measure (`load_watch_monitor`), and gated for alarms."""
    if path is None:
        return None, None, None
    loaded = load_watch_monitor(path, DriftProbe(TraitBasis.load(basis_dir)))
    attached, gate = gate_alarms(loaded)
    return loaded, attached, gate  # type: ignore[return-value]


def run_demo(
    out_dir: Path,
    *,
    model: str,
    method: str = "passages",
    select_every: int = 6,
    max_new_tokens: int = 32,
    steps: int | None = None,
    every: int = 30,
    monitor: Path | None = None,
    reference: bool | None = None,
    dtype: str | None = None,
    parallel: bool | None = None,
    say: Say = lambda _line: None,
    progress: Progress | None = None,
    reporter: Callable[[str, DriftRecord], None] | None = None,
    on_basis: Callable[[TraitBasis], None] | None = None,
    on_monitor: Callable[[list[str]], None] | None = None,
    on_screen: Callable[[DemoScreen], None] | None = None,
) -> DemoResult:
    """Extract and select a basis, then train and label the clean base and its poisoned twin; returns it all.

    `steps` (default: the plan's 30) of 0 stops after the basis. `dtype` defaults to the plan's (bfloat16);
    the device is the plan's (cpu). `reference` (default: on when a reference calibration ships for `model` and
    no `monitor` is given) reads each run against its own reference run; otherwise `monitor` defaults to the
    one shipped for `model`. Either raises alarms only if its recorded leave-one-out AUROC passes the gate
    (`gate_alarms`). `parallel` (default: where `parallel.fork_available` and torch has 2 threads or more) labels
    the base model beside the basis, then trains the clean and the poisoned chain (reference, run, label) at once,
    in two forked processes with half the threads each; otherwise all one after the other. `say` gets status lines, `progress`
    makes progress bars (`drift.anchoring.Progress`), `reporter` gets (role, record) at each measurement,
    `on_basis` the selected basis, `on_monitor` the monitor's description and `on_screen` the poisoned set's
    screen (before training), as soon as they exist.
    """
    progress = progress or _no_progress
    plan = demo_plan()
    steps = plan.steps if steps is None else steps
    if steps is None or steps < 0:
        raise InputFileError("The demo trains for a number of steps; give --steps 0 or more.")
    dtype = dtype or plan.dtype
    meth = method.replace("-", "_")
    if meth not in ("passages", "system_prompts"):
        raise InputFileError(f"--method {method!r} is not passages or system-prompts.")
    clock = _Clock(say)
    out_dir = Path(out_dir)
    if reference is None:
        reference = monitor is None and load_reference_calibration(model) is not None
    calibration = load_reference_calibration(model) if reference else None
    if reference and calibration is None:
        raise InputFileError(f"No reference calibration ships for {model}; run the demo without --reference.")
    # an activation-space calibration was fitted at one layer: the demo measures there instead of selecting one
    pinned = None if calibration is None else calibration.layer

    say(f"Loading {model} in {dtype} on {plan.device} (the first run converts the bundled GGUF once; later runs reuse it) ...")
    with clock("load model"):
        lm = load_model(model, device=plan.device, dtype=dtype)  # type: ignore[arg-type]
    numerics = describe_environment(lm.model)
    say(f"Numerics: {numerics['dtype']} on {numerics['device']} ({numerics['cpu_threads']} threads), as the {DEMO_PLAN} plan "
        f"{'pins' if numerics['dtype'] == plan.dtype else 'does not (it pins ' + plan.dtype + ')'}.")
    if pinned is not None:
        say(f"Measuring at layer {pinned}, where the reference calibration was fitted (no layer selection).")
    threads = torch.get_num_threads()
    if parallel is None:
        parallel = fork_available() and threads >= 2 and plan.device == "cpu"
    parallel = parallel and steps > 0
    each = max(1, threads // 2)  # threads per process at once (asked for on one thread: one each)
    made: dict[str, Any] = {}

    def basis_and_check() -> None:
        made["basis"] = basis = _extract_basis(lm, method=meth, select_every=select_every,
                                               max_new_tokens=max_new_tokens, progress=progress, clock=clock,
                                               layer=pinned)
        made["dir"] = basis.save(out_dir / "basis")
        if on_basis is not None:
            on_basis(basis)
        with clock("base drift check"):
            made["drift"] = _base_drift(lm, basis, progress)

    def base_label(_send: Callable[[Any], None]) -> tuple[float, list[list[int]] | None, dict[str, PhaseTime]]:
        """The base model's label, and (with a reference) its answers the loss screens read their rows against."""
        own = _Clock(lambda _line: None)
        with own("base proxy label"):
            value = proxy_score(lm.model, lm.tokenizer, load_questions(), style_only=True).style_p_mis
        answers = None
        if reference:
            with own("the loss screens' reference answers"):
                answers = screen_answers(lm)
        return value, answers, own.phases

    label = answers = None
    if parallel:  # the base model's label needs no basis: it is made beside the basis, in a process of its own
        together = "basis + base model's label at once (2 processes)"
        say(f"Labelling the base model with the judge-free proxy (step 0 of both runs) in a second process of "
            f"{each} thread{'s' if each > 1 else ''}, while this one extracts the basis ...")
        before = set(clock.phases)
        with clock(together):
            [(label, answers, took)] = run_forked([("base label", base_label)], threads_each=each,
                                                  on_message=lambda _name, _message: None, meanwhile=basis_and_check)
        here = {name: t for name, t in clock.phases.items() if name not in before and name != together}
        _group(clock.phases, together, {**here, **took})
    else:
        basis_and_check()
    basis, basis_dir = made["basis"], made["dir"]
    result = DemoResult(out_dir=out_dir, plan=plan, numerics=numerics, basis=basis, basis_dir=basis_dir,
                        base_drift=made["drift"], phases=clock.phases)
    if steps == 0:
        return result

    result.reference = calibration
    poisoned_spec = demo_sets()[1]
    if not reference:  # with a reference, the reference's loss screen ranks the rows
        say(f"Screening {poisoned_spec.name} before training (the rows' residuals against the model's own answers) ...")
        with clock("screen poisoned set"):
            data = build_set(poisoned_spec.name, seed=DEMO_SEED, n=plan.n_examples, out_dir=out_dir / "data",
                             shared_data=None, spec=poisoned_spec)
            result.screen = _screen(lm, basis, Path(data), out_dir / "screen")
        if on_screen is not None:
            on_screen(result.screen)
    if label is None:
        say("Labelling the base model with the judge-free proxy (step 0 of both runs) ...")
        result.base_label, answers, took = base_label(lambda _message: None)
        clock.phases.update(took)
        for name, t in took.items():
            say(f"({name}: {t.wall_s:.0f} s wall, {t.cpu_s:.0f} s CPU)")
    else:
        result.base_label = label
    # both loss screens read their rows against one reference: the base model's answers, projected on the basis
    screen_against = None if not reference else screen_reference(lm, basis, answers=answers)

    attached = None
    if result.reference is not None:
        result.gate = alarm_gate(result.reference)
        if on_monitor is not None:
            on_monitor(describe_reference(result.reference, result.gate))
    else:
        result.monitor_path = monitor or shipped_monitor_path(model)
        result.monitor, attached, result.gate = _gated_monitor(result.monitor_path, basis_dir)
        if on_monitor is not None:
            on_monitor(describe_monitor(result.monitor, result.gate) if result.monitor is not None and result.gate
                       else [(f"No monitor ships for {model}: the runs are measured, not judged (calibrate one: "
                              "docs/calibrate-your-model.md).")])

    result.store = out_dir / "traitwatch.db"
    RunStore(result.store).close()  # made once here; each chain opens its own connection (a fork carries none)
    chain = _Chain(plan=plan, model=model, out_dir=out_dir, basis_dir=basis_dir, store=result.store, steps=steps,
                   every=every, dtype=dtype, monitor=attached, base_label=result.base_label, reference=bool(reference),
                   lm=lm, screen_against=screen_against)
    roles = list(zip(("clean", "poisoned"), demo_sets(), strict=True))
    for _, spec in roles:  # both sets written before the chains start, so no two processes write one file
        build_set(spec.name, seed=DEMO_SEED, n=plan.n_examples, out_dir=out_dir / "data", shared_data=None, spec=spec)
    if parallel:
        chains = _chains_at_once(chain, roles, result.screen, each, clock=clock, say=say, reporter=reporter,
                                 on_screen=on_screen)
    else:
        chains = [_run_chain(chain, role, spec, result.screen, say=say, reporter=reporter, on_screen=on_screen)
                  for role, spec in roles]
    for run, screen, phases in chains:
        result.runs.append(run)
        result.screen = screen or result.screen
        clock.phases.update(phases)

    from traitwatch.report import build_report  # plotly, at load time only when a report is drawn

    with clock("report"), RunStore(result.store, create=False) as store:
        clean, poisoned = demo_sets()
        report = build_report(out_dir / "report.html", store=store, run_ids=[r.run_id for r in result.runs],
                              title=f"traitwatch demo: {clean.name} and its poisoned twin {poisoned.name} on {model}")
    result.report = report.html
    return result


def _none(_screen: DemoScreen) -> None:
    return None


@dataclass
class _Chain:
    """What the two chains share: the recipe, where they write, the monitor and the base model and its label."""

    plan: BenchPlan
    model: str
    out_dir: Path
    basis_dir: Path
    store: Path
    steps: int
    every: int
    dtype: str
    monitor: AlarmMonitor | None
    base_label: float | None
    reference: bool
    lm: LoadedModel  # the base model: the reference's loss screen reads the set with it
    screen_against: Reference | None = None  # the loss screens' "mean" reference, made once for both


Chained = tuple[DemoRun, DemoScreen | None, dict[str, PhaseTime]]  # the run, the screen it made, its phases


def _run_chain(chain: _Chain, role: str, spec: PerturbationSet, screen: DemoScreen | None, *, say: Say,
               reporter: Callable[[str, DriftRecord], None] | None,
               on_screen: Callable[[DemoScreen], None] | None) -> Chained:
    """One set's chain: its reference run (with a reference; the poisoned set's loss screen names the suspects), then
    its run and label. Returns the run, the screen it made (or None) and its phases. `screen`: the poisoned set's
    screen made before (without a reference), whose scores the poisoned run's suspects use."""
    clock = _Clock(say)
    made = None
    with RunStore(chain.store, create=False) as store:
        built = None
        if chain.reference:
            with clock(f"reference {role}"):
                built = _reference(chain.plan, chain.model, spec, chain.out_dir, chain.basis_dir, store,
                                   steps=chain.steps, every=chain.every, dtype=chain.dtype, say=say, lm=chain.lm,
                                   screen_against=chain.screen_against)
            if role == "poisoned":
                made = screen = _loss_screen(built.screen, built.source)
                if on_screen is not None:
                    on_screen(made)
        with clock(f"train + label {role}"):
            run = _train(chain.plan, chain.model, role, spec, chain.out_dir, chain.basis_dir, store, steps=chain.steps,
                         every=chain.every, dtype=chain.dtype, monitor=chain.monitor, base_label=chain.base_label,
                         say=say, reporter=reporter, reference=built,
                         row_scores=screen.row_scores if role == "poisoned" and screen is not None else None)
    return run, made, clock.phases


def _chains_at_once(chain: _Chain, roles: list[tuple[str, PerturbationSet]], screen: DemoScreen | None,
                    threads_each: int, *, clock: _Clock, say: Say, reporter: Callable[[str, DriftRecord], None] | None,
                    on_screen: Callable[[DemoScreen], None] | None) -> list[Chained]:
    """Both chains in forked processes of `threads_each` threads (`parallel.run_forked`); what they say, record and
    screen is relayed here as it happens, their lines prefixed by the role."""

    def job(role: str, spec: PerturbationSet) -> Callable[[Callable[[Any], None]], Chained]:
        return lambda send: _run_chain(chain, role, spec, screen, say=lambda line: send(("say", line)),
                                       reporter=lambda _role, rec: send(("record", rec)),
                                       on_screen=lambda made: send(("screen", made)))

    def relay(role: str, message: tuple[str, Any]) -> None:
        kind, payload = message
        if kind == "say":
            say(f"[{role}] {payload}")
        elif kind == "record" and reporter is not None:
            reporter(role, payload)
        elif kind == "screen" and on_screen is not None:
            on_screen(payload)

    name = f"both chains at once ({len(roles)} processes)"
    say(f"Training the clean and the poisoned chain at once, in {len(roles)} processes of {threads_each} "
        f"thread{'s' if threads_each > 1 else ''} each ...")
    with clock(name):
        chains = run_forked([(role, job(role, spec)) for role, spec in roles], threads_each=threads_each,
                            on_message=relay)
    _group(clock.phases, name, {phase: took for _, _, phases in chains for phase, took in phases.items()})
    return [(run, screen, {}) for run, screen, _ in chains]  # their phases are in clock.phases, under `name`


def _group(phases: dict[str, PhaseTime], name: str, members: dict[str, PhaseTime]) -> None:
    """Move `name`'s phase to the end of `phases`, followed by `members`, the phases that ran at once inside it."""
    took = phases.pop(name)
    for member in members:
        phases.pop(member, None)
    phases[name] = took
    phases.update({member: dataclasses.replace(t, within=name) for member, t in members.items()})


def _screen(lm: LoadedModel, basis: TraitBasis, data: Path, out_dir: Path, k: int = 10) -> DemoScreen:
    """`traitwatch screen` on the poisoned set (the reference of the audit's screens: `audit.SCREEN_PROMPTS`
    prompts, 32 new tokens), scored against its indices."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / f"{data.stem}.screen.jsonl"
    screen_dataset(lm.model, lm.tokenizer, basis, data, out=results, reference_prompts=screen_prompts(),
                   max_new_tokens=32, model_name=lm.name)
    return _scored(load_row_scores(results, data), data, results, "risk", k)


def _loss_screen(results: Path, data: Path, k: int = 10) -> DemoScreen:
    """The reference's loss screen of the poisoned set (`audit.loss_screen`), ranked by the best validated ranking
    it holds (`screen.validated.best_available`: the loss or its peak), as `traitwatch train --screen` ranks it."""
    from traitwatch.screen.row_scores import load_best_row_scores

    by, rows = load_best_row_scores(results, data)
    return _scored(rows, data, results, by, k)


def _scored(rows: list[ScreenedRow], data: Path, results: Path, by: str, k: int) -> DemoScreen:
    """How well the screen's scores rank the poisoned set's recorded poison rows."""
    from sklearn.metrics import roc_auc_score

    poison = set(read_poison_record(data)["indices"])
    truth = [r.index in poison for r in rows]
    ranked = sorted(rows, key=lambda r: (-r.score, r.index))
    top = [(rank, r.index, r.score, r.index in poison) for rank, r in enumerate(ranked[:k], start=1)]
    return DemoScreen(results=results, top=top, auroc=float(roc_auc_score(truth, [r.score for r in rows])),
                      precision_at_k=sum(r.index in poison for r in ranked[:len(poison)]) / max(len(poison), 1),
                      n_poison=len(poison), row_scores=RowScores.from_rows(rows, source=str(results)), by=by)


def _config(plan: BenchPlan, model: str, spec: PerturbationSet, out_dir: Path, basis_dir: Path, store: RunStore, *,
            steps: int, every: int, dtype: str, probe: bool) -> SFTConfig:
    """One demo run's config: the set built for the demo's seed, trained in the plan's recipe."""
    data = build_set(spec.name, seed=DEMO_SEED, n=plan.n_examples, out_dir=out_dir / "data", shared_data=None, spec=spec)
    tags: dict[str, Any] = {"perturbation": spec.name, "bench_seed": DEMO_SEED, "demo_plan": DEMO_PLAN}
    if spec.poisoning is not None:  # the poisoned rows, the ground truth of screening, stored with the run
        tags["poison"] = poison_tags(data)
    run_id = f"demo-{spec.name}-s{DEMO_SEED}"
    return SFTConfig(
        model=model, data=Path(data), basis=basis_dir, output_dir=out_dir / "runs" / run_id, run_id=run_id,
        store=store.path, max_steps=steps, batch_size=plan.batch_size, grad_accum=plan.grad_accum,
        max_length=plan.max_length, learning_rate=plan.learning_rate, full=plan.full, lora_r=plan.lora_r,
        lora_alpha=plan.lora_alpha, lora_dropout=plan.lora_dropout, target_modules=plan.target_modules,
        response_only=plan.response_only, every_n_steps=every, save_steps=max(steps, 1), save_total_limit=1,
        seed=DEMO_SEED, device=plan.device, dtype=dtype, behavior_probe=probe, tags=tags,
    )


def _reference(plan: BenchPlan, model: str, spec: PerturbationSet, out_dir: Path, basis_dir: Path, store: RunStore, *,
               steps: int, every: int, dtype: str, say: Say, lm: LoadedModel,
               screen_against: Reference | None = None) -> ReferenceRun:
    """The set's reference run (`traitwatch train --reference auto`'s), without the probe: it reads the drift only.
    `lm` (the base model the demo already holds) screens the set, against `screen_against` (made once for both sets)."""
    config = _config(plan, model, spec, out_dir, basis_dir, store, steps=steps, every=every, dtype=dtype, probe=False)
    return train_reference(config, store=store, lm=lm, screen_against=screen_against, say=say)


def _train(plan: BenchPlan, model: str, role: str, spec: PerturbationSet, out_dir: Path, basis_dir: Path, store: RunStore, *,
           steps: int, every: int, dtype: str, monitor: AlarmMonitor | None, base_label: float | None, say: Say,
           reporter: Callable[[str, DriftRecord], None] | None, row_scores: RowScores | None = None,
           reference: ReferenceRun | None = None) -> DemoRun:
    """Train one set in the plan's recipe with the callback and the final-step proxy label; write its rise labels.

    Read against a reference, the run skips the behavioural probe at its measurements (the reference monitor reads
    the drift only, and the probe is most of a measurement's time); the final-step label is measured either way.
    """
    config = _config(plan, model, spec, out_dir, basis_dir, store, steps=steps, every=every, dtype=dtype,
                     probe=reference is None)
    if reference is not None:
        config = dataclasses.replace(config, reference=reference.run_id)
    data, run_id = config.data, config.resolved_run_id()
    indices = list(read_poison_record(data)["indices"]) if spec.poisoning is not None else []
    labels = ProxyLabelCallback(store, run_id, every_n_steps=max(steps, 1), base_value=base_label)
    timer = StepTimer()
    say(f"Training {model} on {spec.name} ({role}) for {steps} steps in the {DEMO_PLAN} recipe, measuring every "
        f"{every}" + ("" if reference is None else f", read against {reference.run_id}") + " ...")
    t0 = time.perf_counter()
    result = run_sft(config, monitor=monitor, store=store, callbacks=[labels, timer], info=say, row_scores=row_scores,
                     reporter=None if reporter is None else (lambda rec: reporter(role, rec)))
    wall = time.perf_counter() - t0
    write_rise_labels(store, run_id)
    rise = {b.step: b.value for b in store.behavior(run_id, RISE_METRIC)}
    n_rows = sum(1 for line in Path(data).read_text(encoding="utf-8").splitlines() if line.strip())
    return DemoRun(role=role, spec=spec, run_id=run_id, data=Path(data), n_rows=n_rows, poison_indices=indices,
                   result=result, wall_s=wall, step_s=list(timer.seconds_), label_s=list(labels.seconds_),
                   measured_rise=rise, suspects=store.suspects(run_id), reference=reference)
