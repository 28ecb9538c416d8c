"""``vitmed checkpoints``: registered weights."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import catalog
from ..choices import CheckpointRole
from ._common import JsonOpt, print_json, print_table, state, want_json

app = typer.Typer(help="Registered weights: initialisations and run checkpoints.", no_args_is_help=True)


@app.command("list")
def list_(
    ctx: typer.Context,
    role: Annotated[Optional[CheckpointRole], typer.Option(
        help="Only this role: init (a starting point), best or last (a run's epochs).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List checkpoints with their family (DINOv2, DINOv3, HF, timm, run), architecture,
    licence note (where the release has one), source and sha256.

    Example: vitmed checkpoints list --json
    """
    rows = catalog.list_checkpoints(state(ctx).registry(write=False), role=role.value if role else None)
    if want_json(ctx, json_out):
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "init", "family", "arch", "role", "source", "run_id", "n_params",
                           "sha256", "licence"],
                    title="checkpoints",
                    empty=f"none with role {role.value}" if role else "no checkpoints yet - run vitmed pretrain-load")
