"""How the library tells its caller what it is doing, without printing.

Long work (ingest, fine-tuning, comparisons, reports) takes an ``on_event``
callable and calls it with :class:`Progress` (a task advanced) or
:class:`Notice` (a line worth showing: an epoch's result, a warning).  The CLI
turns these into rich progress bars and stderr lines; a notebook may print
them or collect them; ``None`` ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Union


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps of ``task`` (``total`` None: unknown); ``note`` e.g. a rate."""

    task: str
    done: int
    total: int | None
    note: str = ""

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total


Level = Literal["detail", "info", "warning"]


@dataclass(frozen=True)
class Notice:
    """A line for the user: ``detail`` (a routine result, e.g. an epoch's metrics; a quiet
    caller hides these), ``info`` (a step, an answer to the user's action) or ``warning``
    (something left out or doubtful)."""

    text: str
    level: Level = "info"


Event = Union[Progress, Notice]
Listener = Callable[[Event], None]


def emit(listener: Listener | None, event: Event) -> None:
    """Hand ``event`` to ``listener`` when there is one."""
    if listener is not None:
        listener(event)


def notice(listener: Listener | None, text: str, level: Level = "info") -> None:
    emit(listener, Notice(text, level))


def detail(listener: Listener | None, text: str) -> None:
    emit(listener, Notice(text, "detail"))


def warning(listener: Listener | None, text: str) -> None:
    emit(listener, Notice(text, "warning"))


def progress(listener: Listener | None, task: str, done: int, total: int | None, note: str = "") -> None:
    emit(listener, Progress(task, done, total, note))


__all__ = ["Event", "Level", "Listener", "Notice", "Progress", "detail", "emit", "notice", "progress", "warning"]
