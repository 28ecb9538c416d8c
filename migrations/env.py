"""Alembic environment for the vitmed registry.

The URL comes from vitmed's settings, not alembic.ini; an engine handed in
by vitmed (``config.attributes["engine"]``) is used as it is.  SQLite gets
batch mode so that later revisions can alter tables.
"""

from alembic import context

from vitmed_cli.config import registry_url
from vitmed_cli.registry import models  # noqa: F401 - registers every table
from vitmed_cli.registry.db import create_registry_engine

config = context.config
target_metadata = models.Base.metadata


def _engine():
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    return create_registry_engine(registry_url(None))


def run_migrations_offline() -> None:
    context.configure(
        url=registry_url(None),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
