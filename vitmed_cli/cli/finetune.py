"""`vitmed finetune`: not provided by this version yet."""

from __future__ import annotations

import typer

from ..errors import NotAvailableYet


def finetune(ctx: typer.Context) -> None:
    """Not available yet in this version of vitmed."""
    raise NotAvailableYet("vitmed finetune is not available yet in this version")
