"""Who is training a run: the owning process, its heartbeat, and whether it is still alive.

A run in status ``running`` names its owner (host, pid and a token that tells a reused
pid apart) and refreshes ``heartbeat_at`` while it trains.  A killed process cannot mark
its run as ended, so readers decide: on the owner's own host the process is looked up
directly; from another host, a heartbeat older than :data:`STALE_AFTER_SECONDS` means the
owner is gone.  Such a run is shown as ``interrupted (stale)`` and may be resumed; a run
whose owner is alive may not (two processes would train it into one folder).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass
from typing import Literal

HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 300.0  # ten missed heartbeats
STALE_STATUS = "interrupted (stale)"

State = Literal["alive", "gone"]


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    token: str | None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()[:8]
    except OSError:
        return ""


def process_token(pid: int) -> str | None:
    """The boot and start time of process ``pid`` (Linux), which a reused pid does not share."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return f"{_boot_id()}:{fields[19]}"  # field 22 of stat: start time in clock ticks
    except (OSError, IndexError):
        return None


def current_owner() -> Owner:
    pid = os.getpid()
    return Owner(socket.gethostname(), pid, process_token(pid))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    except OSError:
        return False
    return True


def owner_state(host: str | None, pid: int | None, token: str | None,
                heartbeat_at: dt.datetime | None, now: dt.datetime | None = None) -> State:
    """Whether the process that owns a running run is still there."""
    if host is None or pid is None:
        return "gone"  # no owner recorded: written before owners were, by a process long gone
    if host == socket.gethostname():
        if not _pid_alive(pid):
            return "gone"
        return "alive" if token is None or process_token(pid) in (None, token) else "gone"
    if heartbeat_at is None:
        return "gone"
    now = now or dt.datetime.now(dt.timezone.utc)
    if heartbeat_at.tzinfo is None:  # SQLite returns naive UTC
        heartbeat_at = heartbeat_at.replace(tzinfo=dt.timezone.utc)
    return "alive" if (now - heartbeat_at).total_seconds() < STALE_AFTER_SECONDS else "gone"


def run_state(run) -> State | None:
    """``alive``/``gone`` for a run in status running, None for a run that ended."""
    if run.status != "running":
        return None
    return owner_state(run.owner_host, run.owner_pid, run.owner_token, run.heartbeat_at)


def display_status(run) -> str:
    """The status to show: a running run whose owner is gone is ``interrupted (stale)``."""
    return STALE_STATUS if run_state(run) == "gone" else run.status


def heartbeat_age(run, now: dt.datetime | None = None) -> float | None:
    if run.heartbeat_at is None:
        return None
    at = run.heartbeat_at if run.heartbeat_at.tzinfo else run.heartbeat_at.replace(tzinfo=dt.timezone.utc)
    return ((now or dt.datetime.now(dt.timezone.utc)) - at).total_seconds()
