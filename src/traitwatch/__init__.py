"""traitwatch: trait-space monitoring for emergent misalignment during finetuning.

`import traitwatch` is light: it imports neither torch nor transformers. `TraitWatchCallback` is looked
up on first access (a PEP 562 module `__getattr__`): `from traitwatch import TraitWatchCallback` imports
`traitwatch.train.callback`, and with it torch and transformers, and gives the real class, so
`issubclass(TraitWatchCallback, transformers.TrainerCallback)` holds and `Trainer.remove_callback` /
`pop_callback` find an attached instance by this class.
"""

import importlib as _importlib
from typing import TYPE_CHECKING, Any

from traitwatch.errors import BasisMismatchError, InputFileError, ModelLoadError, TraitwatchError

if TYPE_CHECKING:
    from traitwatch.train.callback import TraitWatchCallback

__version__ = "0.1.0"

__all__ = [
    "BasisMismatchError",
    "InputFileError",
    "ModelLoadError",
    "TraitWatchCallback",
    "TraitwatchError",
    "__version__",
]

# name -> the module that defines it, imported on first access of the name
_ON_FIRST_ACCESS = {"TraitWatchCallback": "traitwatch.train.callback"}


def __getattr__(name: str) -> Any:
    module = _ON_FIRST_ACCESS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ON_FIRST_ACCESS})
