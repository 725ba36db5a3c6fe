"""traitwatch: trait-space monitoring for emergent misalignment during finetuning."""

from traitwatch.errors import BasisMismatchError, InputFileError, ModelLoadError, TraitwatchError

__version__ = "0.1.0"

__all__ = [
    "BasisMismatchError",
    "InputFileError",
    "ModelLoadError",
    "TraitwatchError",
    "__version__",
]
