"""The small-scale EM benchmark: perturbation sets, a resumable run grid with proxy labels, and its report.

One room per idea, imports going down only: `session.py` (one `traitwatch bench` call) -> `results` (results.json,
RESULTS.md, figures) -> `analysis` (detection, poison, row screening) -> `grid` (plans, the resumable runs, labels,
recorded features, shards) -> `sets` (the training sets). Plans ship in `plans/`, data in `data/`; the names below
are re-exported from the rooms.
"""

from traitwatch.bench.grid.labels import ProxyLabelCallback, StepTimer, write_rise_labels
from traitwatch.bench.grid.plan import BenchPlan
from traitwatch.bench.grid.runner import measure_base_costs, prepare_basis, prepare_semantic_basis, run_grid
from traitwatch.bench.results.results import analyze, write_results_md
from traitwatch.bench.sets.perturbations import PERTURBATION_SETS, build_set

__all__ = [
    "PERTURBATION_SETS", "BenchPlan", "ProxyLabelCallback", "StepTimer", "analyze", "build_set",
    "measure_base_costs", "prepare_basis", "prepare_semantic_basis", "run_grid", "write_results_md", "write_rise_labels",
]
