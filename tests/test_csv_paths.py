"""CSV image paths: one file is one image however it is spelt, paths stay inside the dataset folder
(unless --allow-outside), a NUL byte is an error naming its line, a semicolon CSV reads as one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select
from typer.testing import CliRunner

from vitmed_cli.cli import app
from vitmed_cli.registry.models import Dataset, Image

runner = CliRunner()


def _invoke(url: str, *args: str):
    return runner.invoke(app, ["--db", url, *args])


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _folder(tmp_path: Path, names=("a", "b", "c")) -> Path:
    folder = tmp_path / "ds"
    (folder / "img").mkdir(parents=True)
    for i, n in enumerate(names):
        PILImage.fromarray(np.full((20, 20), 40 * (i + 1), dtype=np.uint8)).save(folder / "img" / f"{n}.png")
    return folder


def _ingest(url, csv: Path, *extra: str):
    return _invoke(url, "ingest", "csv", str(csv), "--name", "d", "--image-size", "16", "--workers", "1",
                   "--no-progress", *extra)


def _keys(make_registry, url) -> dict[str, str]:
    with make_registry(url).session() as s:
        return dict(s.execute(select(Image.key, Image.source_path).order_by(Image.id)).all())


def test_spellings_of_one_path_are_one_image(sqlite_url, make_registry, tmp_path):
    folder = _folder(tmp_path)
    csv = folder / "labels.csv"
    csv.write_text("path,Cardiomegaly\n./img/a.png,1\nimg//b.png,0\nimg/sub/../c.png,1\n")
    result = _ingest(sqlite_url, csv, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_ingested"] == 3
    base = folder.resolve()
    assert _keys(make_registry, sqlite_url) == {
        "img/a.png": str(base / "img/a.png"), "img/b.png": str(base / "img/b.png"),
        "img/c.png": str(base / "img/c.png")}
    # the same registration read again with other spellings is the same images, not new ones
    csv.write_text("path,Cardiomegaly\nimg/a.png,1\n./img/b.png,0\nimg/c.png,1\n")
    again = _ingest(sqlite_url, csv, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["n_new_images"] == 0 and len(_keys(make_registry, sqlite_url)) == 3
    # three spellings of one file in one CSV: refused, naming both lines
    csv.write_text("path,Cardiomegaly\nimg/../img/a.png,1\n./img/a.png,0\nimg/a.png,1\n")
    line = _one_line_error(_invoke(sqlite_url, "ingest", "csv", str(csv), "--name", "e"))
    assert line == (f"Error: {csv}: line 2 ('img/../img/a.png') and line 3 ('./img/a.png') name the same image - "
                    "each image may be listed once; delete one of the lines")


def test_paths_outside_the_dataset_folder_need_allow_outside(sqlite_url, make_registry, tmp_path):
    folder = _folder(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    PILImage.fromarray(np.full((20, 20), 200, dtype=np.uint8)).save(outside / "x.png")
    csv = folder / "labels.csv"
    base = folder.resolve()
    csv.write_text("path,Cardiomegaly\nimg/a.png,1\n../../etc/passwd,0\n")
    line = _one_line_error(_ingest(sqlite_url, csv))
    assert line == (f"Error: {csv.resolve()}: line 3, column 'path': '../../etc/passwd' is outside the dataset "
                    f"folder {base} - images must lie under it; pass --allow-outside if they really live "
                    "elsewhere")
    csv.write_text(f"path,Cardiomegaly\nimg/a.png,1\n{outside / 'x.png'},0\n")
    line = _one_line_error(_ingest(sqlite_url, csv))
    assert f"line 3, column 'path': '{outside / 'x.png'}' is outside the dataset folder {base}" in line
    with make_registry(sqlite_url).session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0
    csv.write_text("path,Cardiomegaly\nimg/a.png,1\n../elsewhere/x.png,0\n")
    ok = _ingest(sqlite_url, csv, "--allow-outside", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["n_ingested"] == 2
    assert _keys(make_registry, sqlite_url)["../elsewhere/x.png"] == str(outside.resolve() / "x.png")


def test_a_nul_byte_in_a_path_names_its_line_on_both_back_ends(registry_url, make_registry, tmp_path):
    folder = _folder(tmp_path)
    csv = folder / "labels.csv"
    csv.write_bytes(b"path,Cardiomegaly\nimg/a.png,1\nimg/b\x00.png,0\n")
    line = _one_line_error(_ingest(registry_url, csv))
    assert line == (f"Error: {csv.resolve()}: line 3, column 'path' holds a NUL byte ('img/b\\x00.png') - no file "
                    "name or label contains one; correct the cell (the file may be damaged or not text)")
    with make_registry(registry_url).session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0


def test_a_semicolon_separated_csv_is_detected(sqlite_url, make_registry, tmp_path):
    folder = _folder(tmp_path)
    csv = folder / "labels.csv"
    csv.write_text("path;patient_id;Cardiomegaly;comment\nimg/a.png;P1;1;x, y\nimg/b.png;P1;0;z\nimg/c.png;P2;1;\n")
    result = _ingest(sqlite_url, csv, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["n_images"], out["n_patients"], out["findings"]) == (3, 2, ["Cardiomegaly"])
    # a file whose delimiter cannot be told (lines differ) reads as one column: the error asks about it
    odd = folder / "odd.csv"
    odd.write_text("path;Cardiomegaly\nimg/a.png;1\nimg/b.png;0;x\n")
    line = _one_line_error(_invoke(sqlite_url, "ingest", "csv", str(odd), "--name", "odd"))
    assert "the file has: path;Cardiomegaly (one column: is the file separated by ';', not commas?)" in line


def test_chexpert_paths_leaving_the_dataset_folder_are_refused(tmp_path):
    from vitmed_cli.datasets.formats import read_dataset
    from vitmed_cli.datasets.formats.chexpert import CHEXPERT_FINDINGS
    from vitmed_cli.errors import InputError

    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]
    rows = [["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Male", "60", "Frontal", "PA"],
            ["CheXpert-v1.0-small/../../../etc/passwd", "Male", "60", "Frontal", "PA"]]
    lines = [header] + [r + [""] * len(CHEXPERT_FINDINGS) for r in rows]
    (root / "train.csv").write_text("\n".join(",".join(line) for line in lines) + "\n")
    with pytest.raises(InputError) as info:
        read_dataset("chexpert", root)
    assert str(info.value) == (f"{root / 'train.csv'}: line 3, column 'Path': '../../../etc/passwd' is outside the dataset "
                       f"folder {root} - images must lie under it")
