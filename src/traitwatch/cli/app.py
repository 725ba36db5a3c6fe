"""The `traitwatch` command: one small module per command group, wired here."""

from __future__ import annotations

import typer

from traitwatch.cli import audit_cmd, basis_cmd, bench_cmd, calibrate_cmd, check_cmd, demo_cmd, drift_cmd, eval_cmd, report_cmd, runs_cmd, screen_cmd, train_cmd

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
screen_cmd.register(app)
report_cmd.register(app)
bench_cmd.register(app)
check_cmd.register(app)
audit_cmd.register(app)


def main() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    # Library deprecation chatter and per-file loading bars bury the tables users came for.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    app()


if __name__ == "__main__":
    main()
