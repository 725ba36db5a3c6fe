"""A stand-in for a class whose module is imported the first time the class is used.

`from traitwatch import TraitWatchCallback` should cost nothing: a config module or a launcher script
imports it at the top, but torch and transformers (seconds to import, and the CUDA context they may
set up) are only needed once a callback is built. The stand-in is a class (so `Trainer.add_callback`
accepts it like the real one); calling it, reading an attribute such as `from_basis`, or an
`isinstance` check imports the real class and hands over to it. Instances are always real instances.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["lazy_class"]


class _LazyClass(type):
    _lazy_target: tuple[str, str]

    def _load(cls) -> type:
        module, name = cls._lazy_target
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._load()(*args, **kwargs)

    def __getattr__(cls, attr: str) -> Any:
        if attr.startswith("__"):  # introspection (copy, pickle, typing) must not import anything
            raise AttributeError(attr)
        return getattr(cls._load(), attr)

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, cls._load())

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, cls._load())

    def __repr__(cls) -> str:
        module, name = cls._lazy_target
        return f"<class '{module}.{name}' (imported on first use)>"


def lazy_class(module: str, name: str, doc: str) -> type:
    """A class standing in for `module.name` until first use."""
    return _LazyClass(name, (), {"_lazy_target": (module, name), "__doc__": doc, "__module__": "traitwatch"})
