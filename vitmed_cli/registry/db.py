"""Opening the registry: engine, schema check, migrations, one transaction scope."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from .._util import first_line
from ..config import Workspace, get_workspace, registry_url
from ..errors import ConfigError, RefusedError, RegistryUnavailable, SchemaError, VitmedError

SQLITE_BUSY_TIMEOUT_MS = 60_000
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL we cannot parse is shown as given
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _sqlite_connect(readonly: bool):
    def pragmas(dbapi_connection, _record) -> None:
        # Autocommit at the driver level; the "begin" hook below opens each transaction:
        # BEGIN IMMEDIATE by default, so that two writers wait on the busy timeout instead of
        # failing when a read transaction tries to upgrade to a write lock; a plain (deferred)
        # BEGIN for reading sessions (reader()), which in WAL mode never wait for a writer.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if readonly:
            cur.execute("PRAGMA query_only = ON")
        else:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    return pragmas


READ_OPTION = "vitmed_read"


def _reading(conn) -> bool:
    return bool(conn.get_execution_options().get(READ_OPTION))


def _sqlite_begin(conn) -> None:
    reading = _reading(conn)
    # a reading transaction cannot write by mistake: its changes would be thrown away
    conn.exec_driver_sql(f"PRAGMA query_only = {'ON' if reading else 'OFF'}")
    conn.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")


def _server_begin(conn) -> None:
    if _reading(conn):
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")


def reader(engine: Engine) -> Engine:
    """The engine for transactions that only read (on SQLite a plain BEGIN, which in WAL mode
    never waits for a writer; on PostgreSQL READ ONLY)."""
    return engine.execution_options(**{READ_OPTION: True})


def _sqlite_path(parsed) -> Path | None:
    db_path = parsed.database
    if not db_path or db_path == ":memory:" or parsed.query.get("mode") == "memory":
        return None
    return Path(db_path.removeprefix("file:")).expanduser()


def readonly_reason(path: Path) -> str | None:
    """Why SQLite cannot write the registry at ``path`` (None when it can)."""
    folder = path.parent
    if path.exists() and not os.access(path, os.W_OK):
        return f"the registry file {path} is read-only"
    for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if side.exists() and not os.access(side, os.W_OK):
            return f"{side} is read-only"
    if not os.access(folder, os.W_OK):
        return (f"its folder {folder} is not writable (SQLite writes {path.name}-wal and "
                f"{path.name}-shm beside it)")
    return None


def _readonly_mode(path: Path) -> str:
    """``mode=ro`` where SQLite can read the WAL registry without writing (its -shm exists);
    else ``immutable=1``: nothing can write a registry whose folder is read-only to us."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
        return "mode=ro"
    except sqlite3.Error:
        return "immutable=1"


def create_registry_engine(url: str, *, readonly: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys.

    ``readonly`` opens a SQLite file with ``mode=ro`` (for a registry the user may only
    read: nothing is written, not even the journal mode).
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"invalid registry URL {url!r} - use sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB (`db` or VITMED_DB_URL)"
        ) from exc
    kwargs: dict = {"future": True}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        path = _sqlite_path(parsed)
        if path is None:
            raise ConfigError(
                f"{url!r} is an in-memory registry, lost when the command ends (with its runs' "
                "files left behind) - use a file: sqlite:///PATH/registry.db"
            )
        if not path.parent.is_dir():
            raise ConfigError(
                f"registry folder {path.parent} does not exist - create it or choose "
                "another `db` / VITMED_DB_URL"
            )
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        if readonly:
            parsed = parsed.set(database=f"file:{path}?{_readonly_mode(path)}", query={"uri": "true"})
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError as exc:
        raise ConfigError(
            f"unknown database driver in registry URL {_redact(url)} - vitmed keeps its registry in "
            "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB"
        ) from exc
    except ModuleNotFoundError as exc:
        if parsed.get_backend_name() == "postgresql":
            raise ConfigError(
                f"the database driver for {_redact(url)} is not installed ({exc.name}) - run: "
                "pip install 'vitmed[postgres]'"
            ) from exc
        raise ConfigError(
            f"vitmed keeps its registry in SQLite or PostgreSQL, not {parsed.get_backend_name()} - use "
            "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB"
        ) from exc
    except ArgumentError as exc:
        raise ConfigError(f"invalid registry URL {_redact(url)}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connect(readonly))
        event.listen(engine, "begin", _sqlite_begin)
    elif engine.dialect.name == "postgresql":
        event.listen(engine, "begin", _server_begin)
    return engine


def alembic_config(engine: Engine):
    """An Alembic config bound to this engine and vitmed's migrations folder."""
    from alembic.config import Config

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise SchemaError(
            f"vitmed's migrations folder is missing ({MIGRATIONS_DIR}) - reinstall vitmed "
            "from its source tree with pip install -e ."
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with reader(engine).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


@dataclass
class SchemaState:
    current: str | None
    head: str
    has_tables: bool

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def schema_state(engine: Engine) -> SchemaState:
    with reader(engine).connect() as conn:  # opening a registry never waits for a writer
        tables = set(inspect(conn).get_table_names())
    return SchemaState(
        current=current_revision(engine),
        head=head_revision(),
        has_tables=bool(tables - {"alembic_version"}),
    )


class Registry:
    """An open registry: an engine whose schema is at vitmed's head revision, and the
    workspace whose cache and checkpoint files its rows point at.

    A registry opened with ``write=False`` (the CLI's read-only commands) never takes the
    write lock: its sessions read a consistent snapshot while writers go on.
    """

    def __init__(self, engine: Engine, workspace: Workspace | None = None, *, write: bool = True,
                 url: str | None = None):
        self.engine = engine
        self.write = write
        self._url = url
        self._workspace = workspace
        self._writer = sessionmaker(engine, expire_on_commit=False)
        self._reader = sessionmaker(reader(engine), expire_on_commit=False)

    @property
    def workspace(self) -> Workspace:
        """The workspace given when opened; else ``VITMED_HOME`` (read when first asked for)."""
        if self._workspace is None:
            self._workspace = get_workspace()
        return self._workspace

    @property
    def url(self) -> str:
        """The registry's URL as given (password hidden)."""
        return _redact(self._url or self.engine.url.render_as_string(hide_password=False))

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def _unavailable(self, exc: OperationalError) -> VitmedError:
        text = first_line(exc.orig)
        if self.is_sqlite and "readonly" in text.lower():
            path = _sqlite_path(make_url(self._url)) if self._url else _sqlite_path(self.engine.url)
            reason = (readonly_reason(path) if path else None) or "the registry is read-only"
            return RegistryUnavailable(
                f"cannot write to the registry at {self.url}: {reason} - nothing was stored; "
                "run this with write access, or copy the registry to a writable folder and use "
                "`db` with the copy"
            )
        return RegistryUnavailable(
            f"registry error at {self.url}: {text} - nothing was stored; "
            "check the server or file and try again"
        )

    @contextlib.contextmanager
    def session(self, *, readonly: bool | None = None) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any error.

        ``readonly`` (default: not ``self.write``) starts a reading transaction that never
        waits for, or blocks, a writer.
        """
        reading = (not self.write) if readonly is None else readonly
        sess = (self._reader if reading else self._writer)()
        try:
            yield sess
            if not reading:  # a reading transaction just ends with close(): rows read stay loaded
                sess.commit()
        except IntegrityError as exc:
            sess.rollback()
            raise RefusedError(
                f"the registry refused the change: {first_line(exc.orig)} - nothing was stored"
            ) from exc
        except OperationalError as exc:
            sess.rollback()
            raise self._unavailable(exc) from exc
        except DBAPIError as exc:
            # e.g. a value too long for its column on PostgreSQL (DataError)
            sess.rollback()
            raise RefusedError(
                f"the registry refused the change: {first_line(exc.orig)} - nothing was stored"
            ) from exc
        except BaseException:
            sess.rollback()
            raise
        finally:
            sess.close()

    def dispose(self) -> None:
        self.engine.dispose()


def check_schema(engine: Engine, *, auto_create: bool = True) -> SchemaState:
    """Create an empty registry at head; refuse one that is behind, ahead or not vitmed's."""
    url = _redact(engine.url.render_as_string(hide_password=False))
    state = _state_or_unavailable(engine, url)
    if state.up_to_date:
        return state
    if state.current is None:
        if state.has_tables:
            raise SchemaError(
                f"the database at {url} has tables but no vitmed schema version - "
                "point `db` at an empty database or an existing vitmed registry"
            )
        if auto_create:
            upgrade(engine)
            return schema_state(engine)
        return state
    if state.current not in known_revisions():
        raise SchemaError(
            f"the registry at {url} is at schema revision {state.current}, newer than this "
            f"vitmed knows (head {state.head}) - upgrade vitmed (pip install -U vitmed); "
            "the registry was not touched"
        )
    raise SchemaError(
        f"the registry at {url} is at schema revision {state.current}, older than this "
        f"vitmed (head {state.head}) - back it up, then run: vitmed --db '{url}' db upgrade"
    )


def _state_or_unavailable(engine: Engine, url: str) -> SchemaState:
    try:
        return schema_state(engine)
    except (OperationalError, DBAPIError) as exc:
        where = ("check `db` / VITMED_DB_URL" if engine.dialect.name == "sqlite"
                 else "check `db` / VITMED_DB_URL and that the server is running")
        raise RegistryUnavailable(f"cannot open the registry at {url}: {first_line(exc.orig)} - {where}") from exc


def _refuse_unwritable(url: str) -> None:
    """A command that writes, on a SQLite registry the user cannot write: say what is read-only."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return
    path = _sqlite_path(parsed) if parsed.get_backend_name() == "sqlite" else None
    if path is None or not path.parent.is_dir():
        return
    reason = readonly_reason(path)
    if reason is not None:
        verb = "write to" if path.exists() else "create"
        raise RegistryUnavailable(
            f"cannot {verb} the registry at {_redact(url)}: {reason} - this command writes to the "
            "registry; run it with write access, or copy the registry to a writable folder and "
            "use `db` with the copy (reading commands such as runs list work as they are)"
        )


def _open_readonly(url: str) -> bool:
    """A read-only open for a SQLite registry that exists and cannot be written."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False
    if parsed.get_backend_name() != "sqlite":
        return False
    path = _sqlite_path(parsed)
    return path is not None and path.is_file() and readonly_reason(path) is not None


def open_registry(db: str | None = None, *, home: str | os.PathLike | None = None,
                  check: bool = True, write: bool = True) -> Registry:
    """Open (and on first use create) the registry named by ``db`` (else ``VITMED_DB_URL``, else
    the workspace's file); ``home`` is the workspace folder (default ``VITMED_HOME``).

    ``write=False`` is for reading only: sessions never take the write lock, and a SQLite
    registry the user cannot write (a read-only file or folder) is opened read-only.
    """
    url = registry_url(db, home)
    readonly = not write and _open_readonly(url)
    if write:
        _refuse_unwritable(url)
    engine = create_registry_engine(url, readonly=readonly)
    if check:
        try:
            if readonly:
                state = check_schema_readonly(engine)
                if not state.up_to_date:
                    raise SchemaError(
                        f"the registry at {_redact(url)} is at schema revision {state.current}, older "
                        f"than this vitmed (head {state.head}), and read-only - ask its owner to run "
                        "vitmed db upgrade"
                    )
            else:
                check_schema(engine)
        except VitmedError:
            engine.dispose()
            raise
        except SQLAlchemyError as exc:
            engine.dispose()
            raise RegistryUnavailable(
                f"cannot open the registry at {_redact(url)}: {first_line(exc)}"
            ) from exc
    return Registry(engine, get_workspace(home) if home is not None else None, write=write, url=url)


def check_schema_readonly(engine: Engine) -> SchemaState:
    """The schema state, refusing a registry newer than this vitmed; never writes."""
    url = _redact(engine.url.render_as_string(hide_password=False))
    state = _state_or_unavailable(engine, url)
    if state.current is not None and state.current not in known_revisions():
        raise SchemaError(
            f"the registry at {url} is at schema revision {state.current}, newer than this "
            f"vitmed knows (head {state.head}) - upgrade vitmed; the registry was not touched"
        )
    if state.current is None and state.has_tables:
        raise SchemaError(
            f"the database at {url} has tables but no vitmed schema version - "
            "point `db` at an empty database or an existing vitmed registry"
        )
    return state
