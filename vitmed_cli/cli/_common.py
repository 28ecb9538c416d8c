"""Shared CLI plumbing: app state, output options and renderers."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterable, Sequence

import typer
from rich.console import Console
from rich.table import Table

from ..choices import Part  # noqa: F401 - shared by the commands
from ..registry.db import Registry, open_registry

def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped into a file or a log, tables get room instead of rich's 80-column default.
    if not stream.isatty() and "COLUMNS" not in os.environ:
        return Console(stderr=stderr, width=160)
    return Console(stderr=stderr)


console = _console()
err_console = _console(stderr=True)

YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document instead of a table.")
]


@dataclass
class AppState:
    """Options of the root callback, and the registry opened on demand."""

    db: str | None = None
    json: bool = False
    debug: bool = False
    _registry: Registry | None = field(default=None, repr=False)

    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = open_registry(self.db)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.dispose()
            self._registry = None


def state(ctx: typer.Context) -> AppState:
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):
        root.obj = AppState()
    return root.obj


def want_json(ctx: typer.Context, flag: bool) -> bool:
    return flag or state(ctx).json


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def print_json(obj: Any) -> None:
    """One JSON document on stdout, NaN/inf written as null."""
    sys.stdout.write(json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.{digits}f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def print_table(
    rows: Sequence[dict[str, Any]],
    columns: Iterable[str | tuple[str, str]],
    *,
    title: str | None = None,
    empty: str = "nothing here yet",
) -> None:
    """A rich table of ``rows``; ``columns`` are keys or (key, header) pairs."""
    cols = [(c, c) if isinstance(c, str) else c for c in columns]
    if not rows:
        console.print(f"[dim]{title + ': ' if title else ''}{empty}[/dim]")
        return
    table = Table(title=title, show_lines=False)
    for _key, header in cols:
        # wrap rather than cut: piped output is 80 columns wide, and a cut value is a lost one
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*[fmt(row.get(key)) for key, _ in cols])
    console.print(table)


def print_record(record: dict[str, Any], *, title: str | None = None) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in record.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(_clean(value))
        table.add_row(key, fmt(value))
    console.print(table)


def confirm_delete(ctx: typer.Context, yes: bool, question: str, delete, json_out: bool,
                   done: str) -> None:
    """Ask (unless --yes), run ``delete()``, print its result as JSON or the ``done`` line."""
    if not yes:
        typer.confirm(question, abort=True)
    out = delete()
    if want_json(ctx, json_out):
        print_json(out)
    else:
        console.print(done.format(**out))
