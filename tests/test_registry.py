"""The registry: migrations, round trips on SQLite and PostgreSQL, cascades, concurrency."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text

from helpers import populate_registry

from vitmed_cli import catalog
from vitmed_cli.errors import NotFound, RefusedError, SchemaError
from vitmed_cli.registry import db as regdb
from vitmed_cli.registry.models import (
    Base,
    Checkpoint,
    Comparison,
    Dataset,
    EpochMetric,
    Finding,
    Image,
    Label,
    Prediction,
    Run,
    Split,
    SplitAssignment,
)


def _count(reg, model) -> int:
    with reg.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_round_trip_and_listing(any_registry):
    ids = populate_registry(any_registry)
    runs = catalog.list_runs(any_registry)
    assert [r["id"] for r in runs] == [ids["run"]]
    assert runs[0]["init"] == "dinov2" and runs[0]["status"] == "running"
    detail = catalog.run_detail(any_registry, ids["run"])
    assert detail["config"] == {"lr": 1e-5}
    assert detail["init_checkpoint"]["sha256"] == "a" * 64
    assert detail["epochs"][0]["val_auc"] == {"Cardiomegaly": 0.7}
    summary = catalog.dataset_summary(any_registry, "toy")
    assert summary["n_images"] == 2 and summary["n_patients"] == 2
    assert summary["findings"]["Cardiomegaly"]["positive"] == 1
    assert summary["findings"]["Pleural Effusion"]["uncertain"] == 1
    assert summary["findings"]["Cardiomegaly"]["positive_by_part"] == {"s0": {"train": 1}}


def test_label_values_are_checked(any_registry):
    ids = populate_registry(any_registry)
    with pytest.raises(RefusedError, match="nothing was stored"):
        with any_registry.session() as s:
            img = s.scalar(select(Image).where(Image.dataset_id == ids["dataset"]))
            f = s.scalar(select(Finding).where(Finding.dataset_id == ids["dataset"]))
            s.add(Label(image_id=img.id, finding_id=f.id + 100, value=7))
    assert _count(any_registry, Label) == 3


def test_delete_dataset_refused_while_runs_use_it(any_registry):
    populate_registry(any_registry)
    with pytest.raises(RefusedError, match="used by 1 run"):
        catalog.delete_dataset(any_registry, "toy")
    assert _count(any_registry, Image) == 2


def test_delete_run_cascades_then_dataset_deletes(any_registry):
    ids = populate_registry(any_registry)
    catalog.delete_run(any_registry, ids["run"])
    assert _count(any_registry, Run) == 0
    assert _count(any_registry, EpochMetric) == 0
    # the run's own checkpoint and evaluation go with it; the init checkpoint stays
    assert _count(any_registry, Checkpoint) == 1
    assert _count(any_registry, Comparison) == 0
    with any_registry.session() as s:
        s.execute(text("DELETE FROM evaluations"))
    out = catalog.delete_dataset(any_registry, "toy")
    assert out["deleted_images"] == 2
    for model in (Image, Label, Split, SplitAssignment, Finding, Prediction):
        assert _count(any_registry, model) == 0, model.__tablename__


def test_delete_run_refused_while_another_run_starts_from_it(any_registry):
    ids = populate_registry(any_registry)
    with any_registry.session() as s:
        best = s.scalar(select(Checkpoint).where(Checkpoint.role == "best"))
        run = s.get(Run, ids["run"])
        s.add(Run(dataset_id=run.dataset_id, split_id=run.split_id, init_checkpoint_id=best.id,
                  init_name=f"run:{run.id}", arch=run.arch, image_size=32, seed=1, epochs_planned=1))
    with pytest.raises(RefusedError, match="start from its weights"):
        catalog.delete_run(any_registry, ids["run"])
    assert _count(any_registry, Run) == 2


def test_unknown_names_are_clear(registry):
    with pytest.raises(NotFound, match="unknown dataset 'nope'.*run vitmed ingest"):
        catalog.dataset_summary(registry, "nope")
    with pytest.raises(NotFound, match="no run with id 9"):
        catalog.run_detail(registry, 9)


def test_migration_matches_models(registry_url):
    """Upgrading an empty database to head gives exactly what the models declare."""
    engine = regdb.create_registry_engine(registry_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == []
        assert regdb.current_revision(engine) == regdb.head_revision()
    finally:
        engine.dispose()


def test_first_use_creates_registry_at_head(tmp_path):
    reg = regdb.open_registry(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        assert regdb.current_revision(reg.engine) == regdb.head_revision()
        with reg.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == regdb.SQLITE_BUSY_TIMEOUT_MS
    finally:
        reg.dispose()


def test_newer_registry_is_refused_untouched(tmp_path):
    url = f"sqlite:///{tmp_path / 'future.db'}"
    regdb.open_registry(url).dispose()
    engine = regdb.create_registry_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    engine.dispose()
    with pytest.raises(SchemaError, match="newer than this vitmed.*not touched"):
        regdb.open_registry(url)
    engine = regdb.create_registry_engine(url)
    assert regdb.current_revision(engine) == "ffff_future"
    engine.dispose()


def test_older_registry_names_the_upgrade_command(tmp_path, monkeypatch):
    """A registry behind the code's head is not touched; the error gives the exact command."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    regdb.open_registry(url).dispose()
    # Pretend this vitmed ships a revision on top of the registry's head.
    real_head, known = regdb.head_revision(), regdb.known_revisions()
    monkeypatch.setattr(regdb, "head_revision", lambda: "ffff_next")
    monkeypatch.setattr(regdb, "known_revisions", lambda: known | {"ffff_next"})
    with pytest.raises(SchemaError, match=r"older than this vitmed \(head ffff_next\).*vitmed --db .* db upgrade"):
        regdb.open_registry(url)
    engine = regdb.create_registry_engine(url)
    assert regdb.current_revision(engine) == real_head
    engine.dispose()


def test_foreign_database_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    engine = regdb.create_registry_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE customers (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(SchemaError, match="no vitmed schema version"):
        regdb.open_registry(url)


def _writer(url: str, worker: int, n: int) -> None:
    reg = regdb.open_registry(url)
    try:
        for i in range(n):
            with reg.session() as s:
                ds = s.scalar(select(Dataset).where(Dataset.name == "shared"))
                s.add(Image(dataset_id=ds.id, key=f"w{worker}-{i}", source_path="x",
                            view="frontal"))
    finally:
        reg.dispose()


def test_two_processes_write_one_sqlite_registry(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    reg = regdb.open_registry(url)
    with reg.session() as s:
        s.add(Dataset(name="shared", format="csv", source_path="x", image_size=32))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert _count(reg, Image) == 80
    reg.dispose()


def test_value_too_long_is_refused_cleanly_on_postgres(pg_registry_url, make_registry):
    # SQLite does not enforce VARCHAR lengths; the DataError path is PostgreSQL's
    reg = make_registry(pg_registry_url)
    with pytest.raises(RefusedError, match="value too long.*nothing was stored"):
        with reg.session() as s:
            s.add(Dataset(name="x" * 200, format="csv", source_path="x", image_size=32))
    assert _count(reg, Dataset) == 0


@pytest.mark.parametrize("revision", ["0001", "0002"])
def test_registry_from_a_released_schema_upgrades_and_reads(tmp_path, revision):
    """A registry kept from each released schema opens at head with its rows intact."""
    import sqlite3
    from pathlib import Path

    dump = Path(__file__).parent / "data" / f"registry-{revision}.sql"
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript(dump.read_text())
    con.close()
    url = f"sqlite:///{path}"
    engine = regdb.create_registry_engine(url)
    assert regdb.current_revision(engine) == revision
    regdb.upgrade(engine)
    assert regdb.current_revision(engine) == regdb.head_revision()
    engine.dispose()
    reg = regdb.open_registry(url)
    try:
        runs = catalog.list_runs(reg)
        assert [(r["dataset"], r["init"]) for r in runs] == [("toy", "dinov2")]
        assert catalog.dataset_summary(reg, "toy")["n_images"] == 2
    finally:
        reg.dispose()
