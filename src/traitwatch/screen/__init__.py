"""Screen a finetuning dataset before training: per-example trait-space scores, a predicted drift profile,
the riskiest examples, and a filtered copy without them. See `screen.py` for the method, `shards.py` for
screening over several processes."""

from traitwatch.screen.activations import SpanPosition, greedy_responses, span_activations
from traitwatch.screen.examples import (
    EncodedExample,
    Example,
    encode_example,
    example_lines,
    previews,
    read_examples,
    shard_blocks,
    shard_lines,
)
from traitwatch.screen.reference_model import ReferenceScreen
from traitwatch.screen.results import ResultsFile, Row
from traitwatch.screen.row_scores import ScreenedRow, load_row_scores
from traitwatch.screen.screen import (
    DEFAULT_RISK_TRAITS,
    Reference,
    ReferenceKind,
    ScreenResults,
    mean_reference,
    reference_answers,
    risk_from_drift,
    screen_dataset,
)
from traitwatch.screen.shards import (
    merge_shards,
    reference_screen_path,
    screen_shard,
    shard_from_env,
    shard_path,
    shared_reference,
    shared_reference_screen,
)
from traitwatch.screen.summary import (
    Predictor,
    RankBy,
    RankedExample,
    ScreenSummary,
    rank_examples,
    summarize,
    write_filtered,
)

__all__ = [
    "DEFAULT_RISK_TRAITS",
    "EncodedExample",
    "Example",
    "Predictor",
    "RankBy",
    "RankedExample",
    "Reference",
    "ReferenceKind",
    "ReferenceScreen",
    "ResultsFile",
    "Row",
    "ScreenResults",
    "ScreenSummary",
    "SpanPosition",
    "encode_example",
    "example_lines",
    "greedy_responses",
    "mean_reference",
    "merge_shards",
    "previews",
    "rank_examples",
    "read_examples",
    "reference_answers",
    "risk_from_drift",
    "screen_dataset",
    "screen_shard",
    "shard_blocks",
    "shard_from_env",
    "shard_lines",
    "shard_path",
    "shared_reference",
    "shared_reference_screen",
    "reference_screen_path",
    "span_activations",
    "summarize",
    "write_filtered",
]
