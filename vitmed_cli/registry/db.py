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


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # Autocommit at the driver level; SQLAlchemy's "begin" hook below issues
    # BEGIN IMMEDIATE so that two writers wait on the busy timeout instead of
    # failing when a read transaction tries to upgrade to a write lock.
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.close()


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_registry_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"invalid registry URL {url!r} - use sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB (`db` or VITMED_DB_URL)"
        ) from exc
    kwargs: dict = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        db_path = parsed.database
        if db_path and db_path != ":memory:":
            folder = Path(db_path).expanduser().parent
            if not folder.is_dir():
                raise ConfigError(
                    f"registry folder {folder} does not exist - create it or choose "
                    "another `db` / VITMED_DB_URL"
                )
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError as exc:
        raise ConfigError(
            f"unknown database driver in registry URL {_redact(url)} - use sqlite:/// "
            "or postgresql+psycopg://"
        ) from exc
    except ModuleNotFoundError as exc:
        if parsed.get_backend_name() == "postgresql":
            fix = "run: pip install 'vitmed[postgres]'"
        else:
            fix = "vitmed supports sqlite:/// and postgresql+psycopg:// registries"
        raise ConfigError(
            f"the database driver for {_redact(url)} is not installed ({exc.name}) - {fix}"
        ) from exc
    except ArgumentError as exc:
        raise ConfigError(f"invalid registry URL {_redact(url)}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
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

    with engine.connect() as conn:
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
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
    return SchemaState(
        current=current_revision(engine),
        head=head_revision(),
        has_tables=bool(tables - {"alembic_version"}),
    )


class Registry:
    """An open registry: an engine whose schema is at vitmed's head revision, and the
    workspace whose cache and checkpoint files its rows point at."""

    def __init__(self, engine: Engine, workspace: Workspace | None = None):
        self.engine = engine
        self._workspace = workspace
        self._sessionmaker = sessionmaker(engine, expire_on_commit=False)

    @property
    def workspace(self) -> Workspace:
        """The workspace given when opened; else ``VITMED_HOME`` (read when first asked for)."""
        if self._workspace is None:
            self._workspace = get_workspace()
        return self._workspace

    @property
    def url(self) -> str:
        return _redact(self.engine.url.render_as_string(hide_password=False))

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any error."""
        sess = self._sessionmaker()
        try:
            yield sess
            sess.commit()
        except IntegrityError as exc:
            sess.rollback()
            raise RefusedError(
                f"the registry refused the change: {first_line(exc.orig)} - nothing was stored"
            ) from exc
        except OperationalError as exc:
            sess.rollback()
            raise RegistryUnavailable(
                f"registry error at {self.url}: {first_line(exc.orig)} - nothing was stored; "
                "check the server or file and try again"
            ) from exc
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
    try:
        state = schema_state(engine)
    except OperationalError as exc:
        raise RegistryUnavailable(
            f"cannot open the registry at {url}: {first_line(exc.orig)} - check `db` / "
            "VITMED_DB_URL and that the server is running"
        ) from exc
    except DBAPIError as exc:
        raise RegistryUnavailable(
            f"cannot open the registry at {url}: {first_line(exc.orig)}"
        ) from exc
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


def open_registry(db: str | None = None, *, home: str | os.PathLike | None = None,
                  check: bool = True) -> Registry:
    """Open (and on first use create) the registry named by ``db`` (else ``VITMED_DB_URL``, else
    the workspace's file); ``home`` is the workspace folder (default ``VITMED_HOME``)."""
    url = registry_url(db, home)
    engine = create_registry_engine(url)
    if check:
        try:
            check_schema(engine)
        except VitmedError:
            engine.dispose()
            raise
        except SQLAlchemyError as exc:
            engine.dispose()
            raise RegistryUnavailable(
                f"cannot open the registry at {_redact(url)}: {first_line(exc)}"
            ) from exc
    return Registry(engine, get_workspace(home) if home is not None else None)


def in_debug_mode() -> bool:
    return os.environ.get("VITMED_DEBUG", "").lower() in {"1", "true", "yes"}


def check_schema_readonly(engine: Engine) -> SchemaState:
    """The schema state, refusing a registry newer than this vitmed; never writes."""
    url = _redact(engine.url.render_as_string(hide_password=False))
    try:
        state = schema_state(engine)
    except (OperationalError, DBAPIError) as exc:
        raise RegistryUnavailable(
            f"cannot open the registry at {url}: {first_line(exc.orig)} - check `db` / "
            "VITMED_DB_URL and that the server is running"
        ) from exc
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
