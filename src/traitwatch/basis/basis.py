"""`TraitBasis`: unit trait directions for one base model, saved as safetensors + JSON (no pickle).

A basis folder holds:
* `basis.json`: trait names, candidate layers, the selected layer, the extraction method, a hash of
  the prompts used, the base model's fingerprint, per-layer residual norms and diagnostics;
* `directions.safetensors`: `directions` of shape [n_layers, n_traits, hidden], fp32, unit rows;
* optionally `anchor.safetensors`: the step-0 projections of the measurement prompts (p_0 and N);
  `basis.json` records the layer, prompt hash, model, and the dtype and device type they were computed in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from traitwatch.errors import BasisMismatchError, InputFileError
from traitwatch.models.layers import ModelFingerprint

__all__ = ["Anchor", "Method", "TraitBasis", "FORMAT_VERSION"]

FORMAT_VERSION = 1
Method = Literal["system_prompts", "passages"]


@dataclass
class Anchor:
    """Step-0 reference for drift: per-prompt projections p_0(x) and residual norms ||h_0(x)||.

    Drift is `(mean p_t - mean p_0) / N` with `N = mean ||h_0(x)||` (mean of norms, METHOD.md 3).

    `dtype` and `device` are the precision the residual stream was computed in (`residual_precision`):
    the same model in bf16 and in fp32 is ||d|| = 0.0011 apart (smollm2-135m), which would be read as
    drift, so an anchor is only used on a model running in the same precision. None means
    unknown (an anchor saved before traitwatch recorded it), which never counts as a match.
    """

    layer: int
    prompts_hash: str
    projections: Tensor  # [n_prompts, n_traits] fp32
    norms: Tensor  # [n_prompts] fp32
    model_name: str = ""
    dtype: str | None = None  # e.g. "bfloat16"
    device: str | None = None  # device type, e.g. "cuda"

    @property
    def p0(self) -> Tensor:
        return self.projections.mean(dim=0)

    @property
    def scale(self) -> float:
        return float(self.norms.mean())

    @property
    def precision(self) -> tuple[str | None, str | None]:
        return self.dtype, self.device

    def describe_precision(self) -> str:
        if self.dtype is None or self.device is None:
            return "an unrecorded dtype and device (saved by an older traitwatch)"
        return f"{self.dtype} on {self.device}"

    def meta(self) -> dict[str, Any]:
        """What identifies the anchor besides its tensors: the JSON both the basis file and the run store keep."""
        return {
            "layer": self.layer,
            "prompts_hash": self.prompts_hash,
            "model_name": self.model_name,
            "dtype": self.dtype,
            "device": self.device,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], projections: Tensor, norms: Tensor) -> Anchor:
        """The anchor `meta()` described; raises KeyError/TypeError/ValueError on a bad field."""
        return cls(
            layer=int(meta["layer"]),
            prompts_hash=str(meta["prompts_hash"]),
            projections=projections,
            norms=norms,
            model_name=str(meta.get("model_name", "")),
            dtype=_optional_str(meta.get("dtype")),
            device=_optional_str(meta.get("device")),
        )


@dataclass
class TraitBasis:
    trait_names: list[str]
    layers: list[int]
    directions: Tensor  # [n_layers, n_traits, hidden]
    model: ModelFingerprint
    method: Method
    position: str = "last"
    layer: int | None = None
    prompts_hash: str = ""
    layer_norms: dict[int, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    anchor: Anchor | None = None

    def __post_init__(self) -> None:
        expected = (len(self.layers), len(self.trait_names))
        if tuple(self.directions.shape[:2]) != expected:
            raise InputFileError(
                f"Basis directions have shape {tuple(self.directions.shape)}, expected {expected} + (hidden,)."
            )

    @property
    def hidden_size(self) -> int:
        return int(self.directions.shape[-1])

    @property
    def measure_layer(self) -> int:
        """The layer drift is measured at: the selected one, or the only candidate."""
        if self.layer is not None:
            return self.layer
        if len(self.layers) == 1:
            return self.layers[0]
        raise BasisMismatchError(
            f"This basis has {len(self.layers)} candidate layers and none selected: run "
            f"`traitwatch select-layer` or pass --layer."
        )

    def matrix(self, layer: int | None = None) -> Tensor:
        """[n_traits, hidden] unit directions at `layer` (default: the measurement layer)."""
        layer = self.measure_layer if layer is None else layer
        if layer not in self.layers:
            raise BasisMismatchError(
                f"Layer {layer} is not in this basis (layers {self.layers}); pick one of them or re-extract."
            )
        return self.directions[self.layers.index(layer)]

    def cosine_matrix(self, layer: int | None = None) -> Tensor:
        m = self.matrix(layer)
        return m @ m.T

    # -- persistence -------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "traitwatch.basis",
            "trait_names": self.trait_names,
            "layers": self.layers,
            "layer": self.layer,
            "method": self.method,
            "position": self.position,
            "prompts_hash": self.prompts_hash,
            "model": self.model.to_dict(),
            "layer_norms": {str(k): v for k, v in self.layer_norms.items()},
            "diagnostics": self.diagnostics,
            "anchor": None,
        }
        # Write tensors before the JSON that points at them, each via a temp file + rename, so an
        # interrupted save never leaves a basis.json describing missing or partial tensors.
        _atomic_save({"directions": self.directions.contiguous()}, folder / "directions.safetensors")
        if self.anchor is not None:
            _atomic_save(
                {"projections": self.anchor.projections.contiguous(), "norms": self.anchor.norms.contiguous()},
                folder / "anchor.safetensors",
            )
            meta["anchor"] = self.anchor.meta()
        tmp = folder / "basis.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(folder / "basis.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TraitBasis:
        folder = Path(folder)
        meta_path = folder / "basis.json"
        if not folder.exists():
            raise InputFileError(f"Basis folder {folder} does not exist; create one with `traitwatch extract`.")
        if not meta_path.is_file():
            raise InputFileError(f"{folder} has no basis.json: it is not a basis folder (see `traitwatch extract`).")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputFileError(f"{meta_path} is corrupt ({exc}); re-create the basis with `traitwatch extract`.") from None
        if not isinstance(meta, dict) or meta.get("kind") != "traitwatch.basis":
            raise InputFileError(f"{meta_path} is not a traitwatch basis file.")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise InputFileError(f"{meta_path} was written by a newer traitwatch; upgrade traitwatch to read it.")
        tensors = _load_tensors(folder / "directions.safetensors")
        if "directions" not in tensors:
            raise InputFileError(f"{folder / 'directions.safetensors'} holds no `directions` tensor; re-extract the basis.")
        try:
            anchor = None
            if meta.get("anchor"):
                at = _load_tensors(folder / "anchor.safetensors")
                anchor = Anchor.from_meta(meta["anchor"], at["projections"], at["norms"])
            return cls(
                trait_names=list(meta["trait_names"]),
                layers=[int(x) for x in meta["layers"]],
                directions=tensors["directions"].float(),
                model=ModelFingerprint.from_dict(meta["model"]),
                method=meta["method"],
                position=meta.get("position", "last"),
                layer=None if meta.get("layer") is None else int(meta["layer"]),
                prompts_hash=meta.get("prompts_hash", ""),
                layer_norms={int(k): float(v) for k, v in (meta.get("layer_norms") or {}).items()},
                diagnostics=meta.get("diagnostics") or {},
                anchor=anchor,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputFileError(f"{meta_path} is missing or has a bad field ({exc}); re-create the basis.") from None


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _atomic_save(tensors: dict[str, Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def _load_tensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise InputFileError(f"{path} is missing; the basis folder is incomplete, re-create it with `traitwatch extract`.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputFileError(f"{path} is corrupt ({str(exc).splitlines()[0]}); re-create the basis.") from None
