"""Ingest under faults: a full disk, a decoding process that dies, images that claim to be huge,
a registration or a cache that stopped half-way."""

from __future__ import annotations

import json
import os
import shutil
from collections import namedtuple

import numpy as np
from sqlalchemy import func, select
from typer.testing import CliRunner

from vitmed_cli.cli import app
from vitmed_cli.datasets import cache as cache_mod
from vitmed_cli.registry.models import Dataset, Image

runner = CliRunner()
Usage = namedtuple("Usage", "total used free")


def _invoke(url: str, *args: str):
    return runner.invoke(app, ["--db", url, *args])


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _ingest(url, csv, *extra):
    return _invoke(url, "ingest", "csv", str(csv), "--name", "mine", "--image-size", "32", "--no-progress",
                   *extra)


# --- #2 a full disk, a dead worker ---------------------------------------------------------------


def test_full_disk_is_refused_before_the_cache_is_written_and_the_ingest_resumes(
        sqlite_url, make_registry, csv_dataset, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 5000, 5000))
    line = _one_line_error(_ingest(sqlite_url, csv_dataset, "--workers", "1"))
    registry = make_registry(sqlite_url)
    with registry.session() as s:
        cache = s.scalar(select(Dataset.cache_path))
        assert s.scalar(select(func.count()).where(Image.cache_index.is_not(None))) == 0
    needed = 128 + 6 * 32 * 32  # the header and six 32 x 32 rows
    assert line == (
        f"Error: not enough disk space for the image cache {cache}: it needs {needed / 1000:.1f} KB more and "
        f"{os.path.dirname(cache)} has 5.0 KB free - free space there (or move the workspace, VITMED_HOME, to "
        "a larger disk), then run the same ingest again: it resumes where it stopped"
    )
    assert not os.path.exists(cache)  # refused before allocating
    monkeypatch.setattr(shutil, "disk_usage", real)
    again = _ingest(sqlite_url, csv_dataset, "--workers", "1", "--json")
    assert again.exit_code == 0, again.output
    out = json.loads(again.stdout)
    assert (out["n_images"], out["n_ingested"], out["n_unreadable"]) == (6, 5, 1)
    # the cache's blocks are reserved up front: writing a row can no longer meet a full disk
    st = os.stat(cache)
    assert st.st_blocks * 512 >= st.st_size


def test_a_decoding_process_that_dies_ends_the_ingest_with_one_line(
        sqlite_url, make_registry, csv_dataset, monkeypatch):
    real = cache_mod.decode_image

    def dies_on_003(path, size, **kw):
        if path.endswith("003.png"):
            os._exit(135)  # as a worker killed by SIGBUS on a full disk
        return real(path, size, **kw)

    monkeypatch.setattr(cache_mod, "decode_image", dies_on_003)  # forked workers inherit it
    line = _one_line_error(_ingest(sqlite_url, csv_dataset, "--workers", "2"))
    registry = make_registry(sqlite_url)
    with registry.session() as s:
        cache = s.scalar(select(Dataset.cache_path))
        done = s.scalar(select(func.count()).where(Image.readable.is_not(None)))
        kept = s.scalar(select(func.count()).where(Image.readable.is_(True)))
    assert line.startswith(f"Error: a decoding process died while writing the image cache {cache} (")
    assert line.endswith(" free) - the images cached so far are kept: run the same ingest again to resume, "
                         "with --workers 1 to see the file that fails")
    assert done < 6
    monkeypatch.setattr(cache_mod, "decode_image", real)
    again = _ingest(sqlite_url, csv_dataset, "--workers", "2", "--json")
    assert again.exit_code == 0, again.output
    out = json.loads(again.stdout)
    assert (out["n_images"], out["n_ingested"], out["n_skipped_existing"], out["n_unreadable"]) == (
        6, 5 - kept, kept, 1)  # the rows cached before the crash are not decoded again
    cached = np.load(cache, mmap_mode="r")
    with registry.session() as s:
        rows = dict(s.execute(select(Image.key, Image.cache_index)).all())
    assert int(cached[rows["img/003.png"]][16, 16]) == 60 and int(cached[rows["img/004.png"]][16, 16]) == 80
