"""`traitwatch demo`: the main job on the bundled model, end to end, in minutes on a laptop CPU.

Extracts a trait basis for `smollm2-135m` (contrastive passages: on this weak model system-prompt
directions separate held-out prompts far worse), selects the layer by steering, anchors the
measurement prompts, and measures the drift of the base model against itself, which must be zero.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from traitwatch.basis import extract_basis, load_traits
from traitwatch.basis.extraction import build_contrast_set, default_candidate_layers
from traitwatch.cli.basis_cmd import print_basis_summary, run_selection
from traitwatch.cli.common import err, out, progress_bar, user_errors
from traitwatch.cli.drift_cmd import _drift_table, _measure, anchored_probe
from traitwatch.models import BUNDLED_MODEL, load_model

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def demo(
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where to write the basis and results.")] = Path("traitwatch-demo"),
        model: Annotated[str, typer.Option("--model", "-m")] = BUNDLED_MODEL,
        method: Annotated[str, typer.Option(help="passages or system-prompts.")] = "passages",
        select_every: Annotated[int, typer.Option(min=1, help="Try every k-th candidate layer in selection.")] = 3,
        max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    ) -> None:
        """Extract a basis on the bundled model, select a layer, and measure drift."""
        t0 = time.perf_counter()
        err.print(f"Loading {model} (the first run converts the bundled GGUF once; later runs reuse it) ...")
        lm = load_model(model)
        traits = load_traits()
        meth = method.replace("-", "_")
        cand = default_candidate_layers(lm.model)
        n = len(build_contrast_set(lm.tokenizer, traits, meth).sequences)  # type: ignore[arg-type]
        with progress_bar(f"Extracting 7 traits from {n} {meth.replace('_', ' ')} prompts", n) as advance:
            basis = extract_basis(lm.model, lm.tokenizer, traits, layers=cand, method=meth,  # type: ignore[arg-type]
                                  model_name=lm.name, probe_layers=cand[::select_every], progress=advance)
        run_selection(lm, basis, cand[::select_every], 0.25, max_new_tokens, 3)
        basis_dir = basis.save(out_dir / "basis")
        print_basis_summary(basis)
        probe = anchored_probe(basis, lm)
        t1 = time.perf_counter()
        m = _measure(probe, lm, lm.name)
        t_measure = time.perf_counter() - t1
        out.print(_drift_table(f"Drift of the base model against its own basis (layer {probe.layer_}): zero by construction",
                               basis.trait_names, [(lm.name, m)]))
        out.print(f"One drift measurement ({len(probe.prompt_list_)} prompts): {t_measure:.1f} s. "
                  f"Basis: {basis_dir}. Total: {time.perf_counter() - t0:.0f} s.")
