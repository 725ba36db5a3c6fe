"""`traitwatch extract` and `traitwatch select-layer`: build a trait basis for a base model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from traitwatch.basis import TraitBasis, extract_basis, load_traits
from traitwatch.basis.extraction import build_contrast_set, default_candidate_layers
from traitwatch.capture.activations import check_layers
from traitwatch.cli.common import err, out, parse_layers, progress_bar, user_errors
from traitwatch.drift import DriftProbe
from traitwatch.drift.anchoring import anchor_basis as _anchor
from traitwatch.drift.anchoring import select_and_anchor
from traitwatch.errors import InputFileError
from traitwatch.models import BUNDLED_MODEL, LoadedModel, load_model

__all__ = ["print_basis_summary", "register", "run_selection"]

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model: smollm2-135m, tiny-random, a folder or a HF id.")]
DeviceOpt = Annotated[str | None, typer.Option(help="cuda, cuda:1, cpu (default: CUDA when available).")]
DtypeOpt = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")]


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def print_basis_summary(basis: TraitBasis) -> None:
    """Per-layer separation, then the selected layer's per-trait diagnostics and cosine matrix."""
    per_layer = basis.diagnostics.get("per_layer", {})
    table = Table(title=f"Trait basis ({basis.method}, {basis.model.name}): held-out AUROC, mean over traits")
    for col in ("layer", "strict split", "question split", "probe acc", "selection score"):
        table.add_column(col, justify="right")
    scores = (basis.diagnostics.get("layer_selection") or {}).get("scores", {})
    for layer in basis.layers:
        d = per_layer.get(str(layer), {})

        def mean(key: str, d: dict = d) -> float | None:
            vals = [v[key] for v in d.values() if key in v and not math.isnan(v[key])]
            return sum(vals) / len(vals) if vals else None

        mark = " *" if layer == basis.layer else ""
        table.add_row(
            f"{layer}{mark}", _fmt(mean("auroc_strict")), _fmt(mean("auroc_item_split")),
            _fmt(mean("probe_accuracy")), _fmt(scores.get(str(layer))),
        )
    out.print(table)
    layer = basis.layer if basis.layer is not None else basis.layers[len(basis.layers) // 2]
    d = per_layer.get(str(layer), {})
    t2 = Table(title=f"Layer {layer}: per-trait diagnostics and cosine matrix")
    t2.add_column("trait")
    for col in ("strict", "question", "probe"):
        t2.add_column(col, justify="right")
    short = [n[:5] for n in basis.trait_names]
    for s in short:
        t2.add_column(s, justify="right")
    cos = basis.cosine_matrix(layer)
    for k, name in enumerate(basis.trait_names):
        v = d.get(name, {})
        t2.add_row(
            name, _fmt(v.get("auroc_strict")), _fmt(v.get("auroc_item_split")), _fmt(v.get("probe_accuracy")),
            *[f"{float(c):+.2f}" for c in cos[k]],
        )
    out.print(t2)


def run_selection(
    lm: LoadedModel, basis: TraitBasis, layers: list[int] | None, alpha: float, max_new_tokens: int, n_prompts: int,
    by: str = "steering",
) -> None:
    """`select_and_anchor` with the CLI's progress bars."""
    select_and_anchor(lm, basis, layers, alpha=alpha, max_new_tokens=max_new_tokens, n_prompts=n_prompts, by=by,
                      progress=progress_bar)


def anchor_basis(lm: LoadedModel, basis: TraitBasis) -> None:
    """`drift.anchoring.anchor_basis` with the CLI's progress bar."""
    _anchor(lm, basis, progress=progress_bar)


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def extract(
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the basis to.")],
        model: ModelOpt = BUNDLED_MODEL,
        layers: Annotated[str | None, typer.Option(help="Candidate layers, e.g. 10-26 or 12,15,18 (default 30-90% depth).")] = None,
        traits: Annotated[Path | None, typer.Option("--traits", help="YAML file of traits (same shape as traits.yaml).")] = None,
        trait_names: Annotated[str | None, typer.Option(help="Comma-separated traits to use (default: the 7 alignment traits).")] = None,
        method: Annotated[str, typer.Option(help="system-prompts (the paper's) or passages (better on weak models).")] = "system-prompts",
        position: Annotated[str, typer.Option(help="last (METHOD.md) or mean over input tokens.")] = "last",
        select: Annotated[bool, typer.Option(help="Run layer selection after extraction.")] = True,
        by: Annotated[str, typer.Option(help="steering (METHOD.md 2) or separation (best strict-split AUROC).")] = "steering",
        select_layers: Annotated[str | None, typer.Option(help="Layers to try in selection (default: every 2nd candidate).")] = None,
        max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per steered prompt in selection.")] = 48,
        alpha: Annotated[float, typer.Option(min=0.0, help="Steering strength as a fraction of the layer's mean residual norm.")] = 0.25,
        batch_size: Annotated[int, typer.Option(min=1)] = 32,
        device: DeviceOpt = None,
        dtype: DtypeOpt = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        """Extract trait directions at every candidate layer (one pass), select a layer, anchor."""
        names = [n.strip() for n in trait_names.split(",")] if trait_names else None
        trait_set = load_traits(traits, names)
        meth = method.replace("-", "_")
        if meth not in ("system_prompts", "passages"):
            raise InputFileError(f"--method {method!r} is not system-prompts or passages.")
        if position not in ("last", "mean"):
            raise InputFileError(f"--position {position!r} is not last or mean.")
        err.print(f"Loading {model} ...")
        lm = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        cand = check_layers(lm.model, parse_layers(layers) or default_candidate_layers(lm.model))
        n = len(build_contrast_set(lm.tokenizer, trait_set, meth).sequences)  # type: ignore[arg-type]
        with progress_bar(f"Extracting {len(trait_set.traits)} traits ({meth})", n) as advance:
            basis = extract_basis(
                lm.model, lm.tokenizer, trait_set, layers=cand, method=meth, position=position,  # type: ignore[arg-type]
                batch_size=batch_size, model_name=lm.name, progress=advance,
            )
        if select and len(cand) > 1:
            chosen = parse_layers(select_layers) or cand[::2]
            run_selection(lm, basis, chosen, alpha, max_new_tokens, 3, by)
        elif basis.layer is not None:
            anchor_basis(lm, basis)
        basis.save(out_dir)
        print_basis_summary(basis)
        out.print(f"Basis written to {out_dir}" + (f" (layer {basis.layer})" if basis.layer is not None else ""))

    @app.command("select-layer")
    @user_errors
    def select_layer_cmd(
        basis_dir: Annotated[Path, typer.Option("--basis", "-b", help="Basis folder from `traitwatch extract`.")],
        model: Annotated[str | None, typer.Option("--model", "-m", help="Default: the basis's model.")] = None,
        layers: Annotated[str | None, typer.Option(help="Layers to try (default: all candidates).")] = None,
        alpha: Annotated[float, typer.Option(min=0.0, help="Steering strength / layer mean residual norm.")] = 0.25,
        max_new_tokens: Annotated[int, typer.Option(min=1)] = 100,
        prompts: Annotated[int, typer.Option(min=1, help="How many extraction questions to steer on.")] = 3,
        set_layer: Annotated[int | None, typer.Option("--set", help="Skip selection; just use this layer.")] = None,
        by: Annotated[str, typer.Option(help="steering (METHOD.md 2) or separation (best strict-split AUROC).")] = "steering",
        device: DeviceOpt = None,
        dtype: DtypeOpt = "auto",
    ) -> None:
        """Choose the measurement layer by steering divergence (METHOD.md 2) and store it in the basis."""
        basis = TraitBasis.load(basis_dir)
        lm = load_model(model or basis.model.name, device=device, dtype=dtype)
        DriftProbe(basis).check_model(lm.model, lm.tokenizer, lm.name)
        if set_layer is not None:
            basis.matrix(set_layer)  # validates
            basis.layer = set_layer
            anchor_basis(lm, basis)
        else:
            run_selection(lm, basis, parse_layers(layers), alpha, max_new_tokens, prompts, by)
        basis.save(basis_dir)
        print_basis_summary(basis)
        out.print(f"Selected layer {basis.layer}; basis updated in {basis_dir}")
