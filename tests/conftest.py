"""Shared fixtures: a migrated registry on SQLite (always) and PostgreSQL (when configured).

``VITMED_TEST_DATABASE_URL`` names a PostgreSQL database that tests may wipe;
CI sets it.  Without it the PostgreSQL variants skip, naming the variable.
"""

from __future__ import annotations

import os
import sys
import uuid

import pytest
from sqlalchemy import text

from vitmed_cli.registry.db import Registry, create_registry_engine, upgrade
from vitmed_cli.registry.models import Base

PG_ENV = "VITMED_TEST_DATABASE_URL"


def pytest_collection_modifyitems(config, items):
    """Slow tests first: under pytest-xdist one worker starts the long one at once while the
    others share the rest, instead of the long one starting last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_configure(config):
    """Each xdist worker gets its share of the cores for torch, so parallel workers do not
    oversubscribe the CPU (on a shared machine spinning OpenMP threads slow everything).

    The suite starts about a hundred Python processes (CLI runs, study cells, Slurm jobs, torchrun
    ranks); where PYTHONDONTWRITEBYTECODE is set, each would compile vitmed's modules from source
    again (about 0.4 s of CPU each).  The suite runs with Python's default instead: bytecode is
    written to __pycache__ once (git ignores it) and read by every later process."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path_factory, monkeypatch):
    """Every test gets its own VITMED_HOME and no inherited registry URL."""
    home = tmp_path_factory.mktemp("vitmed_home")
    for name in list(os.environ):  # none of the user's settings leak in (the test database stays)
        if name.startswith("VITMED_") and name != PG_ENV:
            monkeypatch.delenv(name)
    monkeypatch.setenv("VITMED_HOME", str(home))
    # an empty Hugging Face cache: weights the user downloaded must not change what tests see
    for name in ("HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf-cache"))
    # pytest-xdist workers inherit COLUMNS=80; the CLI under test writes to a pipe, as a user's would
    monkeypatch.delenv("COLUMNS", raising=False)
    return home


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


def _fresh_pg_schema_url(base_url: str) -> tuple[str, str]:
    """A private schema in the test database, so parallel tests never collide."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_registry_engine(base_url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}options=-csearch_path%3D{schema}", schema


def _drop_pg_schema(base_url: str, schema: str) -> None:
    engine = create_registry_engine(base_url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def _migrated_pg_url():
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (CI sets it; .ci/run starts a server)")
    url, schema = _fresh_pg_schema_url(base)
    engine = create_registry_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    _drop_pg_schema(base, schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path) -> str:
    """A registry URL on each backend, migrated to head."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        engine = create_registry_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    yield from _migrated_pg_url()


@pytest.fixture
def pg_registry_url() -> str:
    """A migrated PostgreSQL registry URL, for behaviour only PostgreSQL has."""
    yield from _migrated_pg_url()


@pytest.fixture
def make_registry(tmp_path):
    """Factory: ``make_registry(url=None)`` opens a migrated registry (SQLite in tmp_path by default)."""
    opened: list[Registry] = []

    def _make(url: str | None = None) -> Registry:
        url = url or f"sqlite:///{tmp_path / 'registry.db'}"
        engine = create_registry_engine(url)
        upgrade(engine)
        reg = Registry(engine)
        opened.append(reg)
        return reg

    yield _make
    for reg in opened:
        reg.dispose()


@pytest.fixture
def registry(make_registry) -> Registry:
    """A migrated SQLite registry in tmp_path."""
    return make_registry()


@pytest.fixture
def csv_dataset(tmp_path):
    """A small csv-format download (tests/helpers.py write_csv_dataset): the CSV's path."""
    from helpers import write_csv_dataset

    return write_csv_dataset(tmp_path / "mydata")


@pytest.fixture
def any_registry(registry_url, make_registry) -> Registry:
    """A migrated registry on SQLite and on PostgreSQL (when configured)."""
    return make_registry(registry_url)


__all__ = ["Base"]
