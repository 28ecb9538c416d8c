"""Reading a registry: read-only files and folders, readers never waiting for a writer, no in-memory registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from helpers import populate_registry
from vitmed_cli import catalog
from vitmed_cli.cli import app
from vitmed_cli.errors import ConfigError
from vitmed_cli.registry import db as regdb
from vitmed_cli.registry.models import Dataset

runner = CliRunner()


def _as_unprivileged() -> list[str]:
    """Run a command without the power to ignore file permissions (root has it, so drop it)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux) to drop root's permission override")
    return [setpriv, "--bounding-set=-all", "--"]


def _cli(url: str, *args: str, env_home) -> subprocess.CompletedProcess:
    env = {**os.environ, "VITMED_HOME": str(env_home)}
    return subprocess.run([*_as_unprivileged(), sys.executable, "-m", "vitmed_cli", "--db", url, *args],
                          capture_output=True, text=True, env=env)


@pytest.fixture
def readonly_registry(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    url = f"sqlite:///{folder / 'registry.db'}"
    reg = regdb.open_registry(url)
    ids = populate_registry(reg)
    reg.dispose()  # checkpoints the WAL: only registry.db is left
    (folder / "registry.db").chmod(0o444)
    folder.chmod(0o555)
    yield url, folder, ids
    folder.chmod(0o755)
    (folder / "registry.db").chmod(0o644)


def test_reading_commands_work_on_a_registry_the_user_can_only_read(readonly_registry, tmp_path):
    url, folder, ids = readonly_registry
    before = sorted(p.name for p in folder.iterdir())
    runs = _cli(url, "runs", "list", "--json", env_home=tmp_path)
    assert runs.returncode == 0, runs.stderr
    assert [r["id"] for r in json.loads(runs.stdout)] == [ids["run"]]
    datasets = _cli(url, "datasets", "list", "--json", env_home=tmp_path)
    assert datasets.returncode == 0, datasets.stderr
    assert [d["name"] for d in json.loads(datasets.stdout)] == ["toy"]
    show = _cli(url, "evals", "show", str(ids["eval_a"]), "--json", env_home=tmp_path)
    assert show.returncode == 0 and json.loads(show.stdout)["id"] == ids["eval_a"], show.stderr
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing was written beside it


def test_a_writing_command_says_what_is_read_only(readonly_registry, tmp_path):
    url, folder, _ = readonly_registry
    res = _cli(url, "split", "toy", env_home=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"Error: cannot write to the registry at {url}: the registry file {folder / 'registry.db'} is "
        "read-only - this command writes to the registry; run it with write access, or copy the "
        "registry to a writable folder and use --db with the copy (reading commands such as runs "
        "list work as they are)"
    ]
    (folder / "registry.db").chmod(0o644)  # the file may be written, its folder may not
    res = _cli(url, "split", "toy", env_home=tmp_path)
    assert res.returncode == 1
    assert f"its folder {folder} is not writable (SQLite writes registry.db-wal" in res.stderr


def test_a_reader_does_not_wait_for_a_writer(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    writer = regdb.open_registry(url)
    populate_registry(writer)
    holding, reader_done = threading.Event(), threading.Event()
    released_before_reader_finished = []

    def write() -> None:
        with writer.session() as s:  # BEGIN IMMEDIATE: holds the write lock until it commits
            s.get(Dataset, 1).notes = "being rewritten"
            s.flush()
            holding.set()
            reader_done.wait(timeout=30)
            released_before_reader_finished.append(not reader_done.is_set())

    thread = threading.Thread(target=write)
    thread.start()
    assert holding.wait(timeout=120)
    reading = regdb.open_registry(url, write=False)
    try:
        rows = catalog.list_runs(reading)  # would wait on the lock with BEGIN IMMEDIATE
        datasets = catalog.list_datasets(reading)
    finally:
        reader_done.set()
        thread.join()
        reading.dispose()
    assert released_before_reader_finished == [False]  # the writer still held the lock
    assert len(rows) == 1 and datasets[0]["name"] == "toy"
    with writer.session(readonly=True) as s:
        assert s.get(Dataset, 1).notes == "being rewritten"
    writer.dispose()


def test_a_reading_session_cannot_write(any_registry):
    populate_registry(any_registry)
    with pytest.raises(Exception) as err:
        with any_registry.session(readonly=True) as s:
            s.execute(text("UPDATE datasets SET notes = 'x'"))
    assert "read" in str(err.value).lower()  # SQLite query_only / PostgreSQL READ ONLY
    with any_registry.session(readonly=True) as s:
        assert s.scalar(select(Dataset.notes)) is None


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:mem?mode=memory&uri=true"])
def test_an_in_memory_registry_is_refused(url):
    with pytest.raises(ConfigError, match="is an in-memory registry, lost when the command ends"):
        regdb.open_registry(url)
    res = runner.invoke(app, ["--db", url, "runs", "list"])
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: {url!r} is an in-memory registry, lost when the command ends")
