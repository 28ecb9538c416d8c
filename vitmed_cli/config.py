"""Where vitmed keeps things: the workspace folder and the registry URL.

The workspace (``VITMED_HOME``, default ``~/.vitmed``) holds the SQLite
registry, the image cache, checkpoints and reports.  The registry URL comes
from ``--db``, else ``VITMED_DB_URL``, else the SQLite file in the workspace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

DEFAULT_HOME = "~/.vitmed"
REGISTRY_FILE = "registry.db"
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def workspace_home(home: str | os.PathLike | None = None) -> Path:
    """The workspace folder, created on first use."""
    raw = home if home is not None else os.environ.get("VITMED_HOME", DEFAULT_HOME)
    path = Path(raw).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the vitmed workspace {path}: {exc.strerror} - "
            "set VITMED_HOME to a writable folder"
        ) from exc
    return path


@dataclass(frozen=True)
class Workspace:
    """Folders of one workspace; each is created when first asked for."""

    home: Path

    def _sub(self, name: str) -> Path:
        path = self.home / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def cache_dir(self) -> Path:
        return self._sub("cache")

    @property
    def checkpoint_dir(self) -> Path:
        return self._sub("checkpoints")

    @property
    def report_dir(self) -> Path:
        return self._sub("reports")

    @property
    def data_dir(self) -> Path:
        return self._sub("data")


def get_workspace(home: str | os.PathLike | None = None) -> Workspace:
    return Workspace(workspace_home(home))


def registry_url(db: str | None = None, home: str | os.PathLike | None = None) -> str:
    """Resolve the registry URL: ``--db``, then ``VITMED_DB_URL``, then the workspace file."""
    url = db or os.environ.get("VITMED_DB_URL")
    if url:
        if "://" not in url:
            # A bare path is taken as a SQLite file, the common case on a laptop - but only
            # one that exists or looks like one, so that a typo does not start a new registry.
            path = Path(url).expanduser()
            if not (path.is_file() or path.suffix.lower() in SQLITE_SUFFIXES):
                raise ConfigError(
                    f"registry {url!r} is neither a URL nor an existing file - use "
                    "sqlite:///PATH, a path ending in .db, or postgresql+psycopg://USER@HOST/DB"
                )
            return f"sqlite:///{path.resolve()}"
        return url
    return f"sqlite:///{workspace_home(home) / REGISTRY_FILE}"
