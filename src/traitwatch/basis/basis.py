"""`TraitBasis`: unit trait directions for one base model, saved as safetensors + JSON (no pickle).

A basis folder holds:
* `basis.json`: trait names, candidate layers, the selected layer, the extraction method, a hash of
  the prompts used, the base model's fingerprint, per-layer residual norms and diagnostics;
* `directions.safetensors`: `directions` of shape [n_layers, n_traits, hidden], fp32, unit rows;
* optionally `anchor.safetensors`: the step-0 projections of the measurement prompts (p_0 and N);
  `basis.json` records the layer, prompt hash, model, and the dtype and device type they were computed in.

`basis.json` also records the sha256 of each tensor file (`files`), checked on load: a tensor file that was
truncated, edited or copied from another basis is refused by name before it is parsed. Folders saved before the
checksums existed load without the check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from safetensors import SafetensorError
from safetensors.torch import load, save_file
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
        files = {"directions.safetensors": _atomic_save({"directions": self.directions.contiguous()},
                                                         folder / "directions.safetensors")}
        if self.anchor is not None:
            files["anchor.safetensors"] = _atomic_save(
                {"projections": self.anchor.projections.contiguous(), "norms": self.anchor.norms.contiguous()},
                folder / "anchor.safetensors",
            )
            meta["anchor"] = self.anchor.meta()
        meta["files"] = files
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
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise InputFileError(f"{meta_path} is corrupt ({reason}); re-create the basis with `traitwatch extract`.") from None
        if not isinstance(meta, dict) or meta.get("kind") != "traitwatch.basis":
            raise InputFileError(f"{meta_path} is not a traitwatch basis file (no \"kind\": \"traitwatch.basis\"); "
                                 "pass a folder written by `traitwatch extract`.")
        version = meta.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise InputFileError(f"{meta_path}: format_version {str(version)[:40]!r} is not an integer; re-create the basis.")
        if version > FORMAT_VERSION:
            raise InputFileError(f"{meta_path} was written by a newer traitwatch; upgrade traitwatch to read it.")
        checksums = meta.get("files")
        if checksums is not None and not (isinstance(checksums, dict)
                                          and all(isinstance(v, str) for v in checksums.values())):
            raise InputFileError(f"{meta_path}: field 'files' must map tensor files to sha256 strings; re-create the basis.")
        tensors = _load_tensors(folder / "directions.safetensors", checksums)
        if "directions" not in tensors:
            raise InputFileError(f"{folder / 'directions.safetensors'} holds no `directions` tensor; re-extract the basis.")
        try:
            anchor = None
            if meta.get("anchor"):
                at = _load_tensors(folder / "anchor.safetensors", checksums)
                anchor = Anchor.from_meta(meta["anchor"], at["projections"], at["norms"])
            basis = cls(
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
            _check_loaded(basis, meta_path)
            return basis
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise InputFileError(f"{meta_path} is missing or has a bad field ({reason}); re-create the basis.") from None


def _check_loaded(basis: TraitBasis, meta_path: Path) -> None:
    """What a later step would trip over, refused at load time with the field named (an edited basis.json)."""
    def bad(what: str) -> InputFileError:
        return InputFileError(f"{meta_path}: {what}; re-create the basis with `traitwatch extract`.")

    names = basis.trait_names
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise bad("field 'trait_names' must list distinct, non-empty trait names")
    if len(set(basis.layers)) != len(basis.layers) or any(x < 0 for x in basis.layers):
        raise bad("field 'layers' must list distinct layer indices >= 0")
    if basis.layer is not None and basis.layer not in basis.layers:
        raise bad(f"field 'layer' ({basis.layer}) is not one of its 'layers' {basis.layers}")
    if basis.directions.ndim != 3 or not bool(basis.directions.isfinite().all()):
        raise bad("its directions must be a finite [layers, traits, hidden] tensor")
    a = basis.anchor
    if a is not None:
        n = a.norms.shape[0] if a.norms.ndim == 1 else -1
        if a.projections.shape != (n, len(names)) or a.layer not in basis.layers or not bool(
                a.projections.isfinite().all() and (a.norms > 0).all()):
            raise bad("its anchor does not fit the basis (layer, shape, or non-finite or non-positive norms)")


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _atomic_save(tensors: dict[str, Tensor], path: Path) -> str:
    """Write via a temp file + rename; returns the file's sha256 for `basis.json`."""
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.replace(path)
    return digest


def _load_tensors(path: Path, checksums: Mapping[str, str] | None = None) -> dict[str, Tensor]:
    if not path.is_file():
        raise InputFileError(f"{path} is missing; the basis folder is incomplete, re-create it with `traitwatch extract`.")
    blob = path.read_bytes()
    expected = None if checksums is None else checksums.get(path.name)
    if checksums is not None and expected != hashlib.sha256(blob).hexdigest():
        raise InputFileError(f"{path} does not match the checksum in basis.json (truncated, edited, or from another "
                             "basis); re-create the basis with `traitwatch extract`.")
    try:
        tensors = load(blob)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputFileError(f"{path} is corrupt ({str(exc).splitlines()[0][:120]}); re-create the basis.") from None
    bad = [k for k, t in tensors.items() if not t.is_floating_point()]
    if bad:
        raise InputFileError(f"{path}: tensor {bad[0]!r} is not floating point; re-create the basis.")
    return tensors
