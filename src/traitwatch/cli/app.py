"""The `traitwatch` command: one small module per command group, wired here."""

from __future__ import annotations

import typer

from traitwatch.cli import basis_cmd, calibrate_cmd, demo_cmd, drift_cmd, eval_cmd, runs_cmd, train_cmd

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Trait-space monitoring for emergent misalignment during finetuning.",
)
basis_cmd.register(app)
drift_cmd.register(app)
runs_cmd.register(app)
demo_cmd.register(app)
train_cmd.register(app)
eval_cmd.register(app)
calibrate_cmd.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
