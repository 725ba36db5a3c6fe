"""traitwatch: trait-space monitoring for emergent misalignment during finetuning.

`from traitwatch import TraitWatchCallback` imports neither torch nor transformers: the callback's module
is imported the first time the class is used (`TraitWatchCallback.from_basis(...)`, a call, an
`isinstance` check), see `traitwatch._lazy`.
"""

from typing import TYPE_CHECKING

from traitwatch._lazy import lazy_class
from traitwatch.errors import BasisMismatchError, InputFileError, ModelLoadError, TraitwatchError

if TYPE_CHECKING:
    from traitwatch.train.callback import TraitWatchCallback
else:
    TraitWatchCallback = lazy_class(
        "traitwatch.train.callback", "TraitWatchCallback",
        "Trait drift of the live model during `transformers.Trainer` training (traitwatch.train.callback).",
    )

__version__ = "0.1.0"

__all__ = [
    "BasisMismatchError",
    "InputFileError",
    "ModelLoadError",
    "TraitWatchCallback",
    "TraitwatchError",
    "__version__",
]
