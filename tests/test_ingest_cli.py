"""``vitmed ingest`` from the command line: errors, idempotent and resumable re-runs, no half-writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from vitmed_cli.datasets import formats as formats_mod
from vitmed_cli.datasets import ingest as ingest_mod
from vitmed_cli.cli import app
from vitmed_cli.datasets import ingest_dataset
from vitmed_cli.errors import AlreadyExists, ConfigError, InputError, RefusedError
from vitmed_cli.registry.models import Dataset, Finding, Image, Label

runner = CliRunner()


def _invoke(url: str, *args: str):
    return runner.invoke(app, ["--db", url, *args])


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _counts(registry) -> tuple[int, int, int, int]:
    with registry.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Dataset, Image, Label, Finding))


def test_csv_ingest_then_idempotent_rerun(sqlite_url, make_registry, csv_dataset):
    first = _invoke(sqlite_url, "ingest", "csv", str(csv_dataset), "--name", "mine", "--image-size", "32",
                    "--workers", "1", "--json")
    assert first.exit_code == 0, first.output
    s1 = json.loads(first.stdout)
    assert (s1["n_images"], s1["n_ingested"], s1["n_unreadable"], s1["n_patients"]) == (6, 5, 1, 3)
    assert s1["findings"] == ["Cardiomegaly", "Pleural Effusion"]
    assert any("comment" in n for n in s1["notes"])
    assert s1["errors"][0]["key"] == "img/005.png"
    registry = make_registry(sqlite_url)
    before = _counts(registry)
    assert before == (1, 6, 11, 2)  # one blank Effusion has no label row
    again = _invoke(sqlite_url, "ingest", "csv", str(csv_dataset), "--name", "mine", "--image-size", "32",
                    "--workers", "1", "--json")
    s2 = json.loads(again.stdout)
    assert (s2["n_ingested"], s2["n_skipped_existing"], s2["n_new_images"], s2["n_unreadable"]) == (0, 5, 0, 1)
    assert _counts(registry) == before
    show = _invoke(sqlite_url, "datasets", "show", "mine", "--json")
    info = json.loads(show.stdout)
    assert (info["n_images"], info["n_patients"], info["n_unreadable"]) == (6, 3, 1)
    assert info["findings"]["Pleural Effusion"] == {"native": "Effusion", "positive": 0, "negative": 4, "uncertain": 1}
    assert info["views"] == {"frontal": 5, "lateral": 1}
    export = _invoke(sqlite_url, "datasets", "export", "mine")
    lines = export.stdout.strip().splitlines()
    assert lines[0] == "key,patient_id,view,Cardiomegaly,Pleural Effusion"
    assert lines[1] == "img/000.png,P0,frontal,0," and lines[4] == "img/003.png,P1,frontal,1,-1"


def test_interrupted_cache_resumes_and_new_rows_are_added(registry, csv_dataset):
    ingest_dataset(registry, "csv", csv_dataset, name="mine", image_size=32, workers=1)
    with registry.session() as s:
        ids = s.scalars(select(Image.id).order_by(Image.id).limit(2)).all()
        s.execute(update(Image).where(Image.id.in_(ids)).values(readable=None, cache_index=None))
        cache_path = s.scalar(select(Dataset.cache_path))
    s2 = ingest_dataset(registry, "csv", csv_dataset, name="mine", image_size=32, workers=1)
    assert (s2.n_ingested, s2.n_skipped_existing) == (2, 3)  # the unreadable one is retried too
    df = pd.read_csv(csv_dataset)
    PILImage.fromarray(np.full((30, 30), 200, dtype=np.uint8)).save(csv_dataset.parent / "img" / "new.png")
    df.loc[len(df)] = {"path": "img/new.png", "patient_id": "P9", "view": "AP", "sex": "M", "age": 30,
                       "Cardiomegaly": 1, "Effusion": 0, "comment": "x"}
    df.to_csv(csv_dataset, index=False)
    s3 = ingest_dataset(registry, "csv", csv_dataset, name="mine", image_size=32, workers=2)
    assert (s3.n_new_images, s3.n_ingested, s3.n_skipped_existing, s3.n_images) == (1, 1, 5, 7)
    cache = np.load(cache_path, mmap_mode="r")
    assert cache.shape == (7, 32, 32)
    with registry.session() as s:
        rows = dict(s.execute(select(Image.key, Image.cache_index)).all())
    assert int(cache[rows["img/new.png"]][16, 16]) == 200
    assert int(cache[rows["img/004.png"]][16, 16]) == 80


def test_missing_columns_fail_at_once_naming_file_and_columns(sqlite_url, tmp_path, make_registry):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,patient_id,Cardiomegaly\na.png,P1,1\n")
    result = _invoke(sqlite_url, "ingest", "csv", str(bad), "--name", "bad")
    assert _one_line_error(result) == (
        f"Error: {bad} is missing column(s) path - expected path; the file has: file, patient_id, Cardiomegaly"
        " - name the image path column with --path-col COLUMN (now 'path') and the patient column with"
        " --patient-col COLUMN (default patient_id)"
    )
    root = tmp_path / "mimic"
    root.mkdir()
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text("dicom_id,subject_id,study_id\n")
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text("subject_id,study_id\n")
    (root / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,split\n")
    result = _invoke(sqlite_url, "ingest", "mimic", str(root), "--name", "m")
    line = _one_line_error(result)
    assert line == (f"Error: {root / 'mimic-cxr-2.0.0-metadata.csv'} is missing column(s) ViewPosition - "
                    "expected dicom_id, subject_id, study_id, ViewPosition; the file has: dicom_id, subject_id, "
                    "study_id")
    assert _counts(make_registry(sqlite_url)) == (0, 0, 0, 0)


def test_missing_folder_and_files_are_named(sqlite_url, tmp_path):
    result = _invoke(sqlite_url, "ingest", "vindr", str(tmp_path / "nope"), "--name", "v")
    assert _one_line_error(result) == (
        f"Error: {tmp_path / 'nope'} does not exist - give the folder (or file) of the vindr download"
    )
    result = _invoke(sqlite_url, "ingest", "cxr14", str(tmp_path), "--name", "n")
    assert "Data_Entry_2017.csv" in _one_line_error(result)


def test_same_name_from_another_source_is_refused(sqlite_url, csv_dataset, tmp_path):
    ok = _invoke(sqlite_url, "ingest", "csv", str(csv_dataset), "--name", "mine", "--workers", "1", "--no-progress")
    assert ok.exit_code == 0, ok.output
    other = tmp_path / "other.csv"
    other.write_text(csv_dataset.read_text())
    result = _invoke(sqlite_url, "ingest", "csv", str(other), "--name", "mine")
    assert _one_line_error(result) == (
        f"Error: dataset 'mine' is already registered from csv {csv_dataset} - choose a new --name "
        "or remove it first: vitmed datasets delete mine"
    )
    # the same source at another size is a second cache of the same dataset (tests/test_resolution.py)
    result = _invoke(sqlite_url, "ingest", "csv", str(csv_dataset), "--name", "mine", "--image-size", "64",
                     "--workers", "1", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["image_size"] == 64 and out["cache_path"].endswith("-64px.npy") and out["n_new_images"] == 0


def test_options_that_do_not_apply_are_refused(sqlite_url, csv_dataset, registry):
    result = _invoke(sqlite_url, "ingest", "csv", str(csv_dataset), "--name", "x", "--label-policy", "any")
    assert _one_line_error(result) == (
        "Error: --label-policy applies to vindr only (several radiologists per image) - remove it for csv"
    )
    result = _invoke(sqlite_url, "ingest", "csv", str(csv_dataset), "--name", "x", "--findings", "Nope")
    assert "is missing column(s) Nope" in _one_line_error(result)
    with pytest.raises(ConfigError, match="use one of: vindr, chexpert, mimic, cxr14, padchest, csv, synthetic"):
        ingest_dataset(registry, "dicomdir", csv_dataset, name="x")


def test_bad_label_value_and_failed_insert_leave_nothing(registry, csv_dataset, monkeypatch, tmp_path):
    bad = tmp_path / "vals.csv"
    bad.write_text("path,patient_id,Cardiomegaly\na.png,P1,1\nb.png,P2,yes\n")
    with pytest.raises(InputError, match=r"has no finding columns .*not findings: Cardiomegaly\)"):
        ingest_dataset(registry, "csv", bad, name="vals")
    with pytest.raises(InputError, match=r"vals.csv: line 3, column 'Cardiomegaly' has 'yes' - finding columns take"):
        ingest_dataset(registry, "csv", bad, name="vals", findings="Cardiomegaly")
    # A failure in the middle of the registration transaction (after images were inserted).
    real = formats_mod.READERS["csv"]

    def poisoned(*args, **kwargs):
        records = real.read(*args, **kwargs)
        records.labels[-1, 0] = 5  # violates the labels CHECK constraint on insert
        return records

    monkeypatch.setitem(formats_mod.READERS, "csv", formats_mod.Reader(poisoned, real.options))
    monkeypatch.setattr(ingest_mod, "INSERT_BATCH", 2)
    with pytest.raises(RefusedError, match="nothing was stored"):
        ingest_dataset(registry, "csv", csv_dataset, name="mine")
    # the batches committed before the failure are removed with the dataset this ingest created
    assert _counts(registry) == (0, 0, 0, 0)


def test_a_failed_batch_of_new_images_leaves_a_registered_dataset_incomplete(registry, csv_dataset, monkeypatch):
    ingest_dataset(registry, "csv", csv_dataset, name="mine", image_size=32, workers=1)
    df = pd.read_csv(csv_dataset)
    for i in range(6, 10):
        PILImage.fromarray(np.full((30, 30), 10 * i, dtype=np.uint8)).save(csv_dataset.parent / "img" / f"{i:03d}.png")
        df.loc[len(df)] = {"path": f"img/{i:03d}.png", "patient_id": f"P{i}", "view": "PA", "sex": "M", "age": 30,
                           "Cardiomegaly": 1, "Effusion": 0, "comment": "x"}
    df.to_csv(csv_dataset, index=False)
    real = formats_mod.READERS["csv"]

    def poisoned(*args, **kwargs):
        records = real.read(*args, **kwargs)
        records.labels[-1, 0] = 5  # the last new image's label violates the CHECK constraint
        return records

    monkeypatch.setitem(formats_mod.READERS, "csv", formats_mod.Reader(poisoned, real.options))
    monkeypatch.setattr(ingest_mod, "INSERT_BATCH", 2)
    with pytest.raises(RefusedError) as info:
        ingest_dataset(registry, "csv", csv_dataset, name="mine", image_size=32, workers=1)
    assert str(info.value).endswith(" - nothing was stored (that batch only: dataset 'mine' keeps the images "
                                    "registered before it and is marked incomplete - run the same ingest again to "
                                    "finish it)")
    with registry.session() as s:  # the earlier dataset stays, with the first batch of new images
        ds = s.scalar(select(Dataset))
        assert ds.options["registration"] == "incomplete"
        assert s.scalar(select(func.count()).select_from(Image)) == 8
    monkeypatch.setitem(formats_mod.READERS, "csv", real)
    done = ingest_dataset(registry, "csv", csv_dataset, name="mine", image_size=32, workers=1)
    assert (done.n_images, done.n_new_images, done.n_ingested) == (10, 2, 4)
    with registry.session() as s:
        assert "registration" not in s.scalar(select(Dataset)).options


def test_synthetic_ingest_via_cli(sqlite_url, tmp_path):
    result = _invoke(sqlite_url, "ingest", "synthetic", str(tmp_path / "syn"), "--name", "syn", "--n-images", "12",
                     "--seed", "1", "--image-size", "32", "--workers", "1", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["format"] == "synthetic" and (out["n_images"], out["n_ingested"], out["n_unreadable"]) == (12, 12, 0)
    cache = np.load(out["cache_path"], mmap_mode="r")
    assert cache.shape == (12, 32, 32) and cache.max() > 100


# --- re-ingest with changed labels, typo cells, unreadable datasets ------------------------------


def test_reingest_with_changed_label_is_refused_and_changes_nothing(sqlite_url, make_registry, csv_dataset):
    args = ("ingest", "csv", str(csv_dataset), "--name", "chxe", "--image-size", "32", "--workers", "1")
    assert _invoke(sqlite_url, *args).exit_code == 0
    registry = make_registry(sqlite_url)
    before = _counts(registry)
    df = pd.read_csv(csv_dataset, dtype=str, keep_default_na=False)
    df.loc[2, "Cardiomegaly"] = "1"  # was 0
    df.to_csv(csv_dataset, index=False)
    line = _one_line_error(_invoke(sqlite_url, *args))
    assert line == (
        "Error: dataset 'chxe' is registered with different labels: 1 image x finding labels differ "
        "(e.g. img/002.png: Cardiomegaly 0 -> 1) and 0 findings are new - ingest under a new --name, "
        "or delete it first with vitmed datasets delete chxe"
    )
    df["Pneumothorax"] = ["0", "1", "0", "0", "", "0"]  # a new finding column
    df.to_csv(csv_dataset, index=False)
    line = _one_line_error(_invoke(sqlite_url, *args))
    assert "1 image x finding labels differ" in line and "and 1 findings are new (Pneumothorax)" in line
    assert _counts(registry) == before
    export = _invoke(sqlite_url, "datasets", "export", "chxe").stdout.strip().splitlines()
    assert export[0] == "key,patient_id,view,Cardiomegaly,Pleural Effusion" and export[3] == "img/002.png,P1,frontal,0,0"
    # Back to the registered labels: the ordinary resumable re-run.
    df = df.drop(columns="Pneumothorax")
    df.loc[2, "Cardiomegaly"] = "0"
    df.to_csv(csv_dataset, index=False)
    again = _invoke(sqlite_url, *args, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["n_skipped_existing"] == 5 and _counts(registry) == before


def test_reingest_detects_a_blanked_label(registry, csv_dataset):
    ingest_dataset(registry, "csv", csv_dataset, name="mine", image_size=32, workers=1)
    df = pd.read_csv(csv_dataset, dtype=str, keep_default_na=False)
    df.loc[3, "Effusion"] = ""  # was -1 (uncertain)
    df.to_csv(csv_dataset, index=False)
    with pytest.raises(AlreadyExists, match=r"1 image x finding labels differ \(e.g. img/003.png: Effusion -1 -> blank\)"):
        ingest_dataset(registry, "csv", csv_dataset, name="mine", image_size=32, workers=1)


def test_one_typo_cell_names_file_line_column_and_value(sqlite_url, make_registry, tmp_path):
    typo = tmp_path / "typo.csv"
    rows = ["path,patient_id,Pneumothorax,Edema,comment"]
    rows += [f"img{i}.png,P{i},{i % 2},{'' if i == 3 else 1},x" for i in range(12)]
    rows[6] = "img5.png,P5,O,1,x"  # line 7 of the file: letter O for zero
    typo.write_text("\n".join(rows) + "\n")
    line = _one_line_error(_invoke(sqlite_url, "ingest", "csv", str(typo), "--name", "t"))
    assert line == (f"Error: {typo}: line 7, column 'Pneumothorax' has 'O' - finding columns take 1, 0, -1 "
                    "(uncertain) or blank; correct the cell")
    line = _one_line_error(_invoke(sqlite_url, "ingest", "csv", str(typo), "--name", "t", "--findings", "Pneumothorax"))
    assert "typo.csv: line 7, column 'Pneumothorax' has 'O'" in line
    assert _counts(make_registry(sqlite_url)) == (0, 0, 0, 0)


def test_every_image_unreadable_fails_but_stays_registered_for_a_resume(sqlite_url, make_registry, tmp_path):
    folder = tmp_path / "v1"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.dicom").write_bytes(b"not an image")
    (folder / "train" / "b.dicom").write_bytes(b"")
    (folder / "labels.csv").write_text("path,Cardiomegaly\ntrain/a.dicom,1\ntrain/b.dicom,0\n")
    args = ("ingest", "csv", str(folder / "labels.csv"), "--name", "v1", "--image-size", "32", "--workers", "1",
            "--no-progress")
    line = _one_line_error(_invoke(sqlite_url, *args))
    assert line.startswith("Error: none of the 2 images of 'v1' could be read (first: train/a.dicom: ")
    assert line.endswith(") - check the files; the dataset is registered so a re-run after fixing them resumes")
    registry = make_registry(sqlite_url)
    assert _counts(registry) == (1, 2, 2, 1)
    from vitmed_cli.datasets.dicom import write_dicom

    for name in ("a.dicom", "b.dicom"):
        write_dicom(folder / "train" / name, np.full((40, 40), 900, dtype=np.uint16))
    fixed = _invoke(sqlite_url, *args, "--json")
    assert fixed.exit_code == 0, fixed.output
    out = json.loads(fixed.stdout)
    assert (out["n_ingested"], out["n_unreadable"], out["n_new_images"]) == (2, 0, 0)
