"""`vitmed pretrain-load`: not provided by this version yet."""

from __future__ import annotations

import typer

from ..errors import NotAvailableYet


def pretrain_load(ctx: typer.Context) -> None:
    """Not available yet in this version of vitmed."""
    raise NotAvailableYet("vitmed pretrain-load is not available yet in this version")
