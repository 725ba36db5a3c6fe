"""`traitwatch demo`'s job (`job.py`): the product's main job on the bundled model, built on the benchmark's sets and
recipe (`bench`) and the reference run of `traitwatch train --reference auto` (`audit`)."""

from traitwatch.demo.job import (
    DEMO_BASE,
    DEMO_FRACTION,
    DEMO_PLAN,
    DEMO_POISON,
    DEMO_SEED,
    DemoResult,
    DemoRun,
    DemoScreen,
    PhaseTime,
    cpu_seconds,
    demo_plan,
    demo_sets,
    describe_monitor,
    run_demo,
)

__all__ = ["DEMO_BASE", "DEMO_FRACTION", "DEMO_PLAN", "DEMO_POISON", "DEMO_SEED", "DemoResult", "DemoRun", "DemoScreen",
           "PhaseTime", "cpu_seconds", "demo_plan", "demo_sets", "describe_monitor", "run_demo"]
