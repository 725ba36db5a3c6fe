"""The small-scale EM benchmark: perturbation sets, a resumable run grid with proxy labels, and its report."""

from traitwatch.bench.labels import ProxyLabelCallback, StepTimer, write_rise_labels
from traitwatch.bench.plan import BenchPlan
from traitwatch.bench.results import analyze, write_results_md
from traitwatch.bench.runner import measure_base_costs, prepare_basis, prepare_semantic_basis, run_grid
from traitwatch.bench.sets import PERTURBATION_SETS, build_set

__all__ = [
    "PERTURBATION_SETS", "BenchPlan", "ProxyLabelCallback", "StepTimer", "analyze", "build_set",
    "measure_base_costs", "prepare_basis", "prepare_semantic_basis", "run_grid", "write_results_md", "write_rise_labels",
]
