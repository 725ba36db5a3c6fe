"""The benchmark's figures (matplotlib PNGs): label and drift over training per type, and drift vs label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


__all__ = ["write_figures"]

_STYLE = {"emergent": "tab:orange", "direct": "tab:red", "benign": "tab:blue"}


def _by_type(res: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for s in res["series"].values():
        out.setdefault(s["type"], []).append(s)
    return out


def write_figures(res: dict[str, Any], out_dir: Path) -> list[str]:
    """Write the PNGs into `out_dir` and return their file names."""
    from traitwatch._optional import require

    matplotlib = require("matplotlib", extra="report")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", extra="report")

    out_dir.mkdir(parents=True, exist_ok=True)
    groups = _by_type(res)
    names: list[str] = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for t, runs in groups.items():
        kind = res["per_type"][t]["kind"]
        ls = "-" if t in res["plan"]["calibration"] else "--"
        for ax, key in zip(axes, ("rise", "drift_norm"), strict=True):
            steps = runs[0]["steps"]
            vals = np.array([[np.nan if v is None else v for v in r[key]] for r in runs if len(r[key]) == len(steps)])
            if vals.size:
                ax.plot(steps, np.nanmean(vals, axis=0), ls, color=_STYLE[kind], marker="o", ms=3, label=f"{t} ({kind})")
    axes[0].axhline(res["plan"]["tau"], color="k", lw=0.8, ls=":")
    axes[0].set(title="Style-matched proxy rise over step 0 (mean over seeds)", xlabel="step", ylabel="rise")
    axes[1].set(title="Trait drift norm ||d|| (mean over seeds)", xlabel="step", ylabel="||d||")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out_dir / "trajectories.png", dpi=110)
    plt.close(fig)
    names.append("trajectories.png")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for t, runs in groups.items():
        kind = res["per_type"][t]["kind"]
        x = [n for r in runs for st, n, y in zip(r["steps"], r["drift_norm"], r["rise"], strict=True) if st > 0 and y is not None]
        y = [y for r in runs for st, y in zip(r["steps"], r["rise"], strict=True) if st > 0 and y is not None]
        ax.scatter(x, y, s=14, color=_STYLE[kind], marker="o" if t in res["plan"]["calibration"] else "^", label=t, alpha=0.8)
    ax.axhline(res["plan"]["tau"], color="k", lw=0.8, ls=":")
    ax.set(title="Every trained checkpoint: drift vs label", xlabel="||d||", ylabel="proxy rise")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "drift_vs_label.png", dpi=110)
    plt.close(fig)
    names.append("drift_vs_label.png")
    return names
