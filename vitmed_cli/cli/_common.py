"""Shared CLI plumbing: app state, output options, renderers, and library events as rich output.

The library never prints: it reports progress and notices through an ``on_event``
callable (:mod:`vitmed_cli.events`).  :class:`EventPrinter` is that callable for
the CLI: progress becomes rich progress bars on stderr, notices become stderr
lines.  Library error messages name parameters in backticks (`batch_size`);
:func:`cli_message` turns them into this CLI's flags (--batch-size).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterable, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .._util import finite_or_none
from ..choices import Part  # noqa: F401 - shared by the commands
from ..errors import ConfigError
from ..events import Event, Notice, Progress
from ..registry.db import Registry, open_registry

PIPED_WIDTH = 160


def piped_width(stream) -> int | None:
    """Piped into a file or a log, output gets room instead of rich's 80-column default."""
    return PIPED_WIDTH if not stream.isatty() and "COLUMNS" not in os.environ else None


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, width=piped_width(sys.stderr if stderr else sys.stdout))


console = _console()
err_console = _console(stderr=True)


def fit_width() -> None:
    """Size both consoles for the streams of this command (not those seen when vitmed was imported)."""
    console.width = piped_width(sys.stdout)
    err_console.width = piped_width(sys.stderr)

YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
DatasetArg = Annotated[str, typer.Argument(metavar="NAME", help="Dataset name, as given to vitmed ingest --name.",
                                           show_default=False)]
RunArg = Annotated[int, typer.Argument(metavar="RUN_ID", help="Run id (see vitmed runs list).", show_default=False)]
EvalArg = Annotated[int, typer.Argument(metavar="EVAL_ID", help="Evaluation id (see vitmed evals list).",
                                        show_default=False)]

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

    def registry(self, *, write: bool = True) -> Registry:
        """The registry, opened on first use; ``write=False`` for commands that only read (they
        never take the write lock and work on a registry the user can only read)."""
        if self._registry is None:
            self._registry = open_registry(self.db, write=write)
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
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)  # the registry stores UTC
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def print_json(obj: Any) -> None:
    """One JSON document on stdout, NaN/inf written as null."""
    sys.stdout.write(json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


NOT_AVAILABLE = "n/a"


def fmt(value: Any, digits: int = 3) -> str:
    """A cell: numbers rounded, undefined values (None, NaN) as n/a (the reason is printed apart)."""
    if value is None:
        return NOT_AVAILABLE
    if isinstance(value, float):
        value = finite_or_none(value)
        return NOT_AVAILABLE if value is None else f"{value:.{digits}f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value) or "-"
    return str(value)


class EventPrinter:
    """Library events as rich output on stderr: a progress bar per task, a line per notice.

    ``progress=False`` shows no bars; ``quiet`` also hides ``detail`` notices (epoch
    lines); steps and warnings always print.  The bars refresh on events, at most ten times a second, with no
    refresh thread (ingest forks worker processes while a bar is shown).
    """

    def __init__(self, *, progress: bool = True, quiet: bool = False,
                 console: Console | None = None):
        self.console = console or err_console
        self.show_progress = progress and not quiet and self.console.is_terminal
        self.quiet = quiet
        self._bar = None
        self._tasks: dict[str, Any] = {}
        self._last = 0.0

    def __enter__(self) -> "EventPrinter":
        if self.show_progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bars

            self._bar = Bars(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=True, auto_refresh=False,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self._tasks.clear()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Notice):
            self.notice(event)
        elif isinstance(event, Progress) and self._bar is not None:
            self.advance(event)

    def notice(self, event: Notice) -> None:
        text = cli_message(event.text)  # `param` in library words -> --param
        if event.level == "warning":
            line = Text("warning: ", style="yellow") + Text(text)
        elif event.level == "detail" and self.quiet:
            return
        else:
            line = Text(text)
        target = self._bar.console if self._bar is not None else self.console
        target.print(line, soft_wrap=True, highlight=False)

    def advance(self, event: Progress) -> None:
        bar = self._bar
        task = self._tasks.get(event.task)
        if task is None:
            if event.finished:
                return
            task = self._tasks[event.task] = bar.add_task(
                escape(event.task), total=event.total, note=escape(event.note))
        bar.update(task, completed=event.done, total=event.total, note=escape(event.note))
        if event.finished:
            bar.remove_task(task)
            del self._tasks[event.task]
        now = time.monotonic()
        if event.finished or now - self._last > 0.1:
            self._last = now
            bar.refresh()


def _all_options(command) -> dict[str, str]:
    """Every option of the CLI, as {flag: flag} and {parameter name: first flag}."""
    out: dict[str, str] = {}
    stack = [command]
    while stack:
        cmd = stack.pop()
        for param in getattr(cmd, "params", []):
            flags = [o for o in getattr(param, "opts", []) if o.startswith("--")]
            if flags:
                out.setdefault(param.name, flags[0])
                for flag in flags:
                    out[flag] = flag
        stack.extend(getattr(cmd, "commands", {}).values())
    return out


_PARAM = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def cli_message(message: str, command=None) -> str:
    """A library message in this CLI's words: `batch_size` becomes --batch-size where the CLI
    has that option (by flag spelling first, then by parameter name); other backticks drop.
    ``command`` is the root click command (default: vitmed's)."""
    if command is None:
        import typer.main

        from . import app

        command = typer.main.get_command(app)
    options = _all_options(command)

    def flag(match: re.Match) -> str:
        name = match.group(1)
        dashed = "--" + name.replace("_", "-")
        return options.get(dashed) or options.get(name) or name

    return _PARAM.sub(flag, message)


def refuse_given(ctx: typer.Context, *, keep: set[str], why: str) -> None:
    """Refuse options the user typed that a mode ignores (e.g. training options with --resume)."""
    given = [
        p for p in ctx.command.params
        if p.name not in keep and getattr(p, "param_type_name", "") == "option"
        and getattr(ctx.get_parameter_source(p.name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")
    ]
    if given:
        flags = ", ".join(p.opts[0] for p in given)
        raise ConfigError(f"{flags}: {why} - leave {'it' if len(given) == 1 else 'them'} out")


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
        console.print(Text(f"{title + ': ' if title else ''}{empty}", style="dim"))
        return
    # Text cells and titles: user strings ("study [v2]", "[/]") are shown as written, never as markup
    table = Table(title=Text(title) if title else None, show_lines=False)
    for _key, header in cols:
        # wrap rather than cut: a cut value is a lost one
        table.add_column(Text(header), overflow="fold")
    for row in rows:
        table.add_row(*[Text(fmt(row.get(key))) for key, _ in cols])
    console.print(table)


def print_record(record: dict[str, Any], *, title: str | None = None) -> None:
    table = Table(title=Text(title) if title else None, show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in record.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(_clean(value))
        elif hasattr(value, "isoformat"):
            value = _clean(value)
        table.add_row(Text(key), Text(fmt(value)))
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
        console.print(Text(done.format(**out)))
