"""Ingest under faults: a full disk, a decoding process that dies, images that claim to be huge,
a registration or a cache that stopped half-way."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import namedtuple

import numpy as np
import pytest
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


def test_a_disk_that_fills_after_the_check_fails_when_the_blocks_are_reserved(
        sqlite_url, make_registry, csv_dataset, monkeypatch):
    import errno

    real = os.posix_fallocate

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)  # another process took the space meanwhile
    big = ("--workers", "1", "--image-size", "256")  # a file with holes to fill (a tiny one has none)
    line = _one_line_error(_invoke(sqlite_url, "ingest", "csv", str(csv_dataset), "--name", "mine", "--no-progress",
                                   *big))
    with make_registry(sqlite_url).session() as s:
        cache = s.scalar(select(Dataset.cache_path))
        assert s.scalar(select(func.count()).where(Image.readable.is_not(None))) == 0  # nothing decoded
    assert line.startswith(f"Error: not enough disk space for the image cache {cache}: it needs ")
    assert line.endswith("then run the same ingest again: it resumes where it stopped")
    monkeypatch.setattr(os, "posix_fallocate", real)
    again = _invoke(sqlite_url, "ingest", "csv", str(csv_dataset), "--name", "mine", "--no-progress", *big, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["n_ingested"] == 5
    st = os.stat(cache)  # the blocks are reserved up front: writing a row cannot meet a full disk
    assert st.st_blocks * 512 >= st.st_size > 6 * 256 * 256


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


# --- #3 images that claim to be huge; decoder errors by their cause ------------------------------


def _rle_dicom(path, rows: int, cols: int) -> None:
    """An RLE Lossless DICOM declaring rows x cols 16-bit pixels with a few bytes of pixel data."""
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = RLELossless
    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    # an RLE header with one segment (16-bit data needs two) and a two-byte segment
    ds.PixelData = encapsulate([(1).to_bytes(4, "little") + (64).to_bytes(4, "little") + bytes(56) + b"\x00\x00"])
    ds.save_as(path, enforce_file_format=True)


def _png_claiming(path, width: int, height: int) -> None:
    """A valid 8 x 8 PNG whose header (IHDR, CRC fixed) claims width x height."""
    import struct
    import zlib

    from PIL import Image as PILImage

    PILImage.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


def test_images_declaring_too_many_pixels_are_refused_before_decoding(sqlite_url, make_registry, tmp_path,
                                                                    monkeypatch):
    from PIL import Image as PILImage

    folder = tmp_path / "bombs"
    folder.mkdir()
    _rle_dicom(folder / "bomb.dcm", 40000, 40000)
    _png_claiming(folder / "bomb.png", 50000, 40000)
    PILImage.fromarray(np.full((40, 30), 90, dtype=np.uint8)).save(folder / "ok.png")
    assert (folder / "bomb.dcm").stat().st_size < 1000
    (folder / "labels.csv").write_text("path,Cardiomegaly\nbomb.dcm,1\nbomb.png,0\nok.png,1\n")
    import pydicom.dataset

    def decoded(self):
        raise AssertionError("pixel data decoded")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(decoded))
    result = _invoke(sqlite_url, "ingest", "csv", str(folder / "labels.csv"), "--name", "bombs", "--image-size",
                     "32", "--workers", "1", "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["n_images"], out["n_ingested"], out["n_unreadable"]) == (3, 1, 2)
    with make_registry(sqlite_url).session() as s:
        errors = dict(s.execute(select(Image.key, Image.error)).all())
    assert errors["bomb.dcm"] == (
        f"ImageTooLarge: {folder / 'bomb.dcm'}: declares 40000 x 40000 = 1,600,000,000 pixels, more than "
        "`max_pixels` (89,478,485) - refused before decoding (a damaged header or a decompression bomb); "
        "raise `max_pixels` if the image is real"
    )
    assert errors["bomb.png"].startswith(
        f"ImageTooLarge: {folder / 'bomb.png'}: declares 50000 x 40000 = 2,000,000,000 pixels, more than "
        "`max_pixels` (89,478,485)")
    assert errors["ok.png"] is None
    # the table names the option as the command line spells it
    table = _invoke(sqlite_url, "ingest", "csv", str(folder / "labels.csv"), "--name", "bombs", "--image-size",
                    "32", "--workers", "1", "--no-progress")
    assert table.exit_code == 0, table.output
    assert "raise --max-pixels if the image is real" in " ".join(table.stdout.split())
    # the limit is the option's: 40 x 30 = 1200 pixels pass at 1200 and are refused at 1199
    assert _invoke(sqlite_url, "ingest", "csv", str(folder / "labels.csv"), "--name", "small", "--image-size",
                   "32", "--workers", "1", "--no-progress", "--max-pixels", "1199").exit_code == 1
    with make_registry(sqlite_url).session() as s:
        small = s.scalar(select(Dataset.id).where(Dataset.name == "small"))
        ok_error = s.scalar(select(Image.error).where(Image.dataset_id == small, Image.key == "ok.png"))
    assert ok_error.startswith(f"ImageTooLarge: {folder / 'ok.png'}: declares 30 x 40 = 1,200 pixels")
    assert cache_mod.decode_image(folder / "ok.png", 32, max_pixels=1200)[0][16, 16] == 90


def test_default_limit_is_pillows_and_decoder_errors_name_their_cause(tmp_path):
    from PIL import Image as PILImage

    from vitmed_cli.choices import DEFAULT_MAX_PIXELS
    from vitmed_cli.datasets.dicom import DicomError, decode_dicom

    assert DEFAULT_MAX_PIXELS == PILImage.MAX_IMAGE_PIXELS
    _rle_dicom(tmp_path / "rle.dcm", 100, 100)  # small enough to decode: the data is what is wrong
    with pytest.raises(DicomError) as info:
        decode_dicom(tmp_path / "rle.dcm")
    message = str(info.value)
    assert message == (
        f"{tmp_path / 'rle.dcm'}: cannot decode RLE Lossless pixel data (pydicom: The number of RLE segments in "
        "the pixel data doesn't match the expected amount (1 vs. 2 segments)) - the pixel data is damaged or "
        "does not match the header"
    )
    assert "pip install" not in message


# --- #7 a cache that stopped half-way ------------------------------------------------------------


def test_a_half_cached_dataset_is_shown_and_refused_until_the_ingest_finishes(
        sqlite_url, make_registry, csv_dataset, monkeypatch):
    import shlex

    from vitmed_cli.datasets import ingest_dataset

    registry = make_registry(sqlite_url)
    real = cache_mod.decode_image

    def killed_at_003(path, size, **kw):
        if path.endswith("003.png"):
            raise KeyboardInterrupt  # as Ctrl-C, or a kill, in the middle of the cache
        return real(path, size, **kw)

    monkeypatch.setattr(cache_mod, "decode_image", killed_at_003)
    with pytest.raises(KeyboardInterrupt):
        ingest_dataset(registry, "csv", csv_dataset, name="mine", image_size=32, workers=1)
    monkeypatch.setattr(cache_mod, "decode_image", real)
    info = json.loads(_invoke(sqlite_url, "datasets", "show", "mine", "--json").stdout)
    resume = f"vitmed ingest csv {csv_dataset} --name mine --image-size 32"
    assert (info["n_images"], info["n_cached"], info["n_not_cached"], info["n_unreadable"]) == (6, 3, 3, 0)
    assert info["status"] == "caching incomplete" and info["resume_command"] == resume
    table = _invoke(sqlite_url, "datasets", "show", "mine").stdout
    assert re.search(r"n_not_cached\s*│\s*3\s", table) and re.search(r"status\s*│\s*caching incomplete", table)
    assert re.search(r"resume_command\s*│\s*vitmed ingest csv ", table)
    refused = ("Error: dataset 'mine' is incomplete: 3 of its 6 images are not cached yet (the ingest stopped "
               "before the end) - finish it before you {} with: " + resume)
    assert _one_line_error(_invoke(sqlite_url, "split", "mine")) == refused.format("split it")
    line = _one_line_error(_invoke(sqlite_url, "finetune", "--dataset", "mine", "--epochs", "1"))
    assert line == refused.format("train on it")
    done = _invoke(sqlite_url, *shlex.split(resume)[1:], "--workers", "1", "--no-progress", "--json")
    assert done.exit_code == 0, done.output
    info = json.loads(_invoke(sqlite_url, "datasets", "show", "mine", "--json").stdout)
    # the unreadable image is counted as unreadable: it will never cache, the dataset is complete
    assert (info["n_cached"], info["n_not_cached"], info["n_unreadable"]) == (5, 0, 1)
    assert info["status"] == "complete" and info["resume_command"] is None
    assert _invoke(sqlite_url, "split", "mine").exit_code == 0


# --- #9 large registrations commit in batches ----------------------------------------------------


def _many(tmp_path, n: int = 12):
    from PIL import Image as PILImage

    folder = tmp_path / "many"
    folder.mkdir()
    lines = ["path,patient_id,Cardiomegaly,Edema"]
    for i in range(n):
        PILImage.fromarray(np.full((12, 12), 10 * i, dtype=np.uint8)).save(folder / f"{i:02d}.png")
        lines.append(f"{i:02d}.png,P{i // 2},{i % 2},{'' if i % 3 else 1}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder / "labels.csv"


def _registering(event) -> bool:
    from vitmed_cli.events import Progress

    return isinstance(event, Progress) and event.task.startswith("registering") and 0 < event.done < event.total


def test_registration_commits_in_batches_and_others_work_between_them(sqlite_url, make_registry, tmp_path,
                                                                      monkeypatch):
    import sqlite3

    from vitmed_cli.datasets import ingest as ingest_mod
    from vitmed_cli.datasets import ingest_dataset

    csv = _many(tmp_path)
    monkeypatch.setattr(ingest_mod, "INSERT_BATCH", 4)
    seen = []

    def between_batches(event):
        if not _registering(event):
            return
        listed = _invoke(sqlite_url, "datasets", "list", "--json")  # a reader
        assert listed.exit_code == 0, listed.output
        row = json.loads(listed.stdout)[0]
        seen.append((event.done, row["n_images"], row["status"]))
        # and a writer: the registration holds no write lock between its batches
        conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    summary = ingest_dataset(make_registry(sqlite_url), "csv", csv, name="many", image_size=16, workers=1,
                             on_event=between_batches)
    assert seen == [(4, 4, "registration incomplete"), (8, 8, "registration incomplete")]
    assert (summary.n_images, summary.n_new_images, summary.n_ingested) == (12, 12, 12)
    row = json.loads(_invoke(sqlite_url, "datasets", "list", "--json").stdout)[0]
    assert (row["n_images"], row["status"]) == (12, "complete")


def test_a_registration_killed_between_batches_is_incomplete_and_the_ingest_finishes_it(
        registry_url, make_registry, tmp_path, monkeypatch):
    from vitmed_cli.datasets import ingest as ingest_mod
    from vitmed_cli.datasets import ingest_dataset
    from vitmed_cli.registry.models import Label

    csv = _many(tmp_path)
    monkeypatch.setattr(ingest_mod, "INSERT_BATCH", 4)
    registry = make_registry(registry_url)

    def killed_after_two_batches(event):
        if _registering(event) and event.done == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_dataset(registry, "csv", csv, name="many", image_size=16, workers=1,
                       on_event=killed_after_two_batches)
    info = json.loads(_invoke(registry_url, "datasets", "show", "many", "--json").stdout)
    resume = f"vitmed ingest csv {csv} --name many --image-size 16"
    assert (info["n_images"], info["status"], info["resume_command"]) == (8, "registration incomplete", resume)
    with registry.session() as s:  # every registered image has its labels: batches are whole
        assert s.scalar(select(func.count()).select_from(Label)) == 8 + 3
    listed = " ".join(_invoke(registry_url, "datasets", "list").stdout.split())
    assert "many: registration incomplete - vitmed datasets show many names the command that finishes it" in listed
    line = _one_line_error(_invoke(registry_url, "split", "many"))
    assert line == ("Error: dataset 'many' is incomplete: its registration stopped before the last images were "
                    f"registered - finish it before you split it with: {resume}")
    again = _invoke(registry_url, "ingest", "csv", str(csv), "--name", "many", "--image-size", "16",
                    "--workers", "1", "--no-progress", "--json")
    assert again.exit_code == 0, again.output
    out = json.loads(again.stdout)
    assert (out["n_images"], out["n_new_images"], out["n_ingested"], out["n_unreadable"]) == (12, 4, 12, 0)
    info = json.loads(_invoke(registry_url, "datasets", "show", "many", "--json").stdout)
    assert (info["status"], info["findings"]["Cardiomegaly"]["positive"], info["findings"]["Edema"]["positive"]) == (
        "complete", 6, 4)
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Label)) == 12 + 4
    assert _invoke(registry_url, "split", "many").exit_code == 0
