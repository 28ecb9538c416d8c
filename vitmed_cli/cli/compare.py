"""`vitmed compare`: not provided by this version yet."""

from __future__ import annotations

import typer

from ..errors import NotAvailableYet


def compare(ctx: typer.Context) -> None:
    """Not available yet in this version of vitmed."""
    raise NotAvailableYet("vitmed compare is not available yet in this version")
