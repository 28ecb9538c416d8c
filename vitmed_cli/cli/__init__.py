"""The ``vitmed`` command line: one root app, one module per command."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer
import typer.core
import typer.rich_utils
from typer.core import TyperGroup

from .. import __version__
from ..errors import VitmedError
from ._common import AppState, cli_message, fit_width, piped_width, state


def _debug_wanted(ctx) -> bool:
    obj = ctx.find_root().obj if ctx is not None else None
    if isinstance(obj, AppState) and obj.debug:
        return True
    return os.environ.get("VITMED_DEBUG", "").lower() in {"1", "true", "yes"}


def _one_line_usage_error(error) -> None:
    """A bad option or argument as one line, like every other vitmed error (exit code 2 stays)."""
    message = " ".join(error.format_message().replace("Value error, ", "").split()).rstrip(".")
    ctx = getattr(error, "ctx", None)
    hint = f" - see {ctx.command_path} --help" if ctx is not None and ctx.command_path else ""
    typer.echo(f"Error: {message}{hint}", err=True)


# typer draws usage errors in a box of several lines; vitmed's errors are one line each
typer.rich_utils.rich_format_error = _one_line_usage_error

_display_type = typer.core.TyperOption.display_type_rich


def _no_type_for_flags(self, ctx):
    """--help shows no <bool> after a flag: a flag takes no value."""
    return None if self.is_flag and self.metavar is None else _display_type(self, ctx)


typer.core.TyperOption.display_type_rich = _no_type_for_flags


class VitmedGroup(TyperGroup):
    """Root group: turns every :class:`VitmedError` into one line on stderr and exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VitmedError as exc:
            if _debug_wanted(ctx):
                raise
            typer.echo(f"Error: {cli_message(str(exc), self)}", err=True)
            raise typer.Exit(1) from None
        finally:
            obj = ctx.obj
            if isinstance(obj, AppState):
                obj.close()

    def list_commands(self, ctx):
        # Keep the order in which commands were attached (grouped by panel).
        return list(self.commands)


app = typer.Typer(
    cls=VitmedGroup,
    name="vitmed",
    help=(
        "vitmed: which pretrained initialisation makes the best chest radiograph model, "
        "and is the difference real?\n\n"
        "Ingest public chest X-ray datasets, split them by patient, fine-tune timm models "
        "from registered initial weights, store every prediction, and compare "
        "initialisations with paired statistics, all recorded in one experiment registry."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vitmed {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    db: Annotated[
        Optional[str],
        typer.Option(
            "--db",
            metavar="URL",
            envvar="VITMED_DB_URL",
            help="Registry URL (sqlite:///PATH or postgresql+psycopg://USER:PW@HOST/DB). "
            "Default: registry.db in the workspace VITMED_HOME (~/.vitmed).",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of tables (all commands).")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="VITMED_DEBUG", help="Show full tracebacks on errors."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    fit_width()
    st = state(ctx)
    st.db, st.json, st.debug = db, json_out, debug


def _attach() -> None:
    from . import (
        checkpoints,
        compare,
        datasets,
        db,
        demo,
        evals,
        finetune,
        ingest,
        predict,
        pretrain,
        report,
        runs,
        split,
        study,
    )

    data, training, analysis, admin = "Data", "Training", "Analysis", "Registry"
    app.command("demo", rich_help_panel="Start here")(demo.demo)
    app.add_typer(study.app, name="study", rich_help_panel="Start here")
    app.command("ingest", rich_help_panel=data)(ingest.ingest)
    app.command("split", rich_help_panel=data)(split.split)
    app.command("pretrain-load", rich_help_panel=data)(pretrain.pretrain_load)
    app.add_typer(datasets.app, name="datasets", rich_help_panel=data)
    app.add_typer(checkpoints.app, name="checkpoints", rich_help_panel=data)
    app.command("finetune", rich_help_panel=training)(finetune.finetune)
    app.command("predict", rich_help_panel=training)(predict.predict)
    app.add_typer(runs.app, name="runs", rich_help_panel=training)
    app.command("compare", rich_help_panel=analysis)(compare.compare)
    app.command("report", rich_help_panel=analysis)(report.report)
    app.add_typer(evals.app, name="evals", rich_help_panel=analysis)
    app.add_typer(db.app, name="db", rich_help_panel=admin)


_attach()


def main() -> None:
    # --help and usage errors are drawn by typer's own rich console: as wide as our tables
    if typer.rich_utils.MAX_WIDTH is None:
        typer.rich_utils.MAX_WIDTH = piped_width(sys.stdout)
    app(prog_name="vitmed")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
