"""A reference for the domain: the drift a run would have without its suspect rows, from the user's own data.

Trait space sees the poison, but a run's absolute drift mostly reads its domain (METHOD.md 10): clean medical
advice moves honesty and corrigibility further than a poisoned arithmetic set does. A user has no clean twin of
their set; they have the set, a screen that ranks its rows, and the recipe. `swap.py` builds the *swap
reference*: the same file with the top-ranked rows replaced, at their positions, by copies of the rows ranked
cleanest, so a run on it shares the seed, the LoRA initialisation, the batch order and the length of the real
run and differs only where the suspects were. `compare.py` reads a run against its reference: the paired drift
difference, per trait and along a direction, with a bootstrap CI over the measurement prompts.

`trajectory.py` holds a reference run's measured drift step by step, and `monitor.py` turns a run's drift minus it
into an alarm, along the model's misalignment direction or as its length (`calibration.py`, shipped per model in
`data/`).

Validation status: measured on clean and poisoned sets by `benchmarks/reference_pilot.py` (its RESULTS.md).
"""

from traitwatch.reference.calibration import ReferenceCalibration, load_reference_calibration
from traitwatch.reference.compare import PairedDrift, paired_drift
from traitwatch.reference.monitor import ReferenceMonitor
from traitwatch.reference.swap import SwapReference, outlying_share, swap_fraction, swap_reference, write_swap_reference
from traitwatch.reference.trajectory import ReferenceTrajectory

__all__ = ["PairedDrift", "ReferenceCalibration", "ReferenceMonitor", "ReferenceTrajectory", "SwapReference",
           "load_reference_calibration", "outlying_share", "paired_drift", "swap_fraction", "swap_reference",
           "write_swap_reference"]
