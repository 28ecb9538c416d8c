"""Splits: patient-level, stratified, reproducible, leak-checked; export/import; official; CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from vitmed_cli.cli import app
from vitmed_cli.errors import AlreadyExists, ConfigError, InputError
from vitmed_cli.registry.models import Image, Split, SplitAssignment
from vitmed_cli.splits import (
    SplitLeakage,
    check_no_leakage,
    export_split,
    import_split,
    make_split,
    official_split,
    stratify_groups,
)

from helpers import SPLIT_FINDINGS as FINDINGS
from helpers import add_dataset


def assignment(registry, split_id):
    with registry.session() as s:
        rows = s.execute(
            select(Image.key, Image.patient_id, SplitAssignment.part)
            .join(SplitAssignment, SplitAssignment.image_id == Image.id)
            .where(SplitAssignment.split_id == split_id)
        ).all()
    return {k: (p, part) for k, p, part in rows}


def test_patient_level_split_for_several_seeds(any_registry):
    add_dataset(any_registry)
    with any_registry.session() as s:
        n_images = s.scalar(select(func.count()).select_from(Image))
    for seed in range(4):
        info = make_split(any_registry, "toy", val=0.1, test=0.2, seed=seed)
        assert info["name"] == f"patient-s{seed}" and info["method"] == "patient"
        rows = assignment(any_registry, info["id"])
        # every image (laterals and unreadable ones too) is assigned
        assert len(rows) == n_images == info["n_images"]
        parts_of: dict[str, set] = {}
        for pid, part in rows.values():
            parts_of.setdefault(pid, set()).add(part)
        assert all(len(v) == 1 for v in parts_of.values())
        frac = {p: sum(1 for _, q in rows.values() if q == p) / n_images for p in ("train", "val", "test")}
        assert abs(frac["val"] - 0.1) < 0.04 and abs(frac["test"] - 0.2) < 0.04
        assert info["parts"]["test"]["n_patients"] == len(
            {pid for pid, q in rows.values() if q == "test"})


def test_same_seed_same_split_other_seed_differs(registry):
    add_dataset(registry)
    a = make_split(registry, "toy", seed=3, name="a")
    b = make_split(registry, "toy", seed=3, name="b")
    c = make_split(registry, "toy", seed=4, name="c")
    ra, rb, rc = (assignment(registry, x["id"]) for x in (a, b, c))
    assert ra == rb
    assert ra != rc


def test_stratification_keeps_positives_in_every_part(registry):
    add_dataset(registry, n_patients=200, seed=1)
    info = make_split(registry, "toy", val=0.15, test=0.2, seed=0)
    for finding in FINDINGS:
        counts = {p: info["parts"][p]["positives"][finding] for p in ("train", "val", "test")}
        total = sum(counts.values())
        assert all(c > 0 for c in counts.values()), (finding, counts)
        # positives follow the fractions closely (a random split would scatter them more)
        assert abs(counts["test"] / total - 0.2) < 0.08, (finding, counts)
        assert abs(counts["val"] / total - 0.15) < 0.08, (finding, counts)


def test_stratify_groups_against_rare_label():
    # 10 groups carry the rare label: with 0.7/0.1/0.2 val must get 1 and test 2.
    pos = np.zeros((100, 2), int)
    pos[:10, 0] = 1
    pos[::3, 1] = 1
    parts = stratify_groups(pos, np.ones(100), (0.7, 0.1, 0.2), seed=5)
    rare = np.bincount(parts[:10], minlength=3)
    assert rare.tolist() == [7, 1, 2]
    assert np.bincount(parts, minlength=3).tolist() == [70, 10, 20]


def test_leak_check_catches_a_corrupted_split(registry):
    add_dataset(registry)
    info = make_split(registry, "toy")
    with registry.session() as s:
        check_no_leakage(s, info["id"])  # fine as made
        # move one image of a multi-image test patient to train
        pid = s.scalar(
            select(Image.patient_id)
            .join(SplitAssignment, SplitAssignment.image_id == Image.id)
            .where(SplitAssignment.split_id == info["id"], SplitAssignment.part == "test")
            .group_by(Image.patient_id).having(func.count() > 1).order_by(Image.patient_id)
        )
        img = s.scalar(select(Image.id).where(Image.patient_id == pid).order_by(Image.id))
        s.execute(update(SplitAssignment)
                  .where(SplitAssignment.split_id == info["id"], SplitAssignment.image_id == img)
                  .values(part="train"))
    with registry.session() as s, pytest.raises(SplitLeakage, match=rf"1 patient\(s\) .*\({pid}\)"):
        check_no_leakage(s, info["id"])


def test_existing_name_refused_and_replace(registry):
    add_dataset(registry)
    make_split(registry, "toy", seed=0)
    with pytest.raises(AlreadyExists, match="already has a split named 'patient-s0' - choose another `name` or pass `replace`"):
        make_split(registry, "toy", seed=0)
    again = make_split(registry, "toy", seed=1, name="patient-s0", replace=True)
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Split)) == 1
        assert s.scalar(select(Split.seed)) == 1
    assert again["seed"] == 1


def test_dataset_without_patient_ids_splits_per_image(registry):
    add_dataset(registry, has_patient_ids=False)
    info = make_split(registry, "toy")
    assert info["method"] == "image" and info["by"] == "image"
    assert info["parts"]["train"]["n_patients"] is None
    assert any("no patient ids" in n for n in info["notes"])


def test_export_import_round_trip(registry, tmp_path):
    add_dataset(registry)
    info = make_split(registry, "toy", seed=2)
    text = export_split(registry, "toy", info["name"])
    assert text.splitlines()[0] == "image_key,patient_id,part"
    assert len(text.splitlines()) == info["n_images"] + 1
    path = tmp_path / "split.csv"
    path.write_text(text)
    back = import_split(registry, "toy", path, "published")
    assert back["method"] == "import"
    assert assignment(registry, back["id"]) == assignment(registry, info["id"])


def test_import_errors_store_nothing(registry, tmp_path):
    add_dataset(registry)
    bad_cols = tmp_path / "cols.csv"
    bad_cols.write_text("key,split\na,train\n")
    with pytest.raises(InputError, match="lacks column\\(s\\) image_key, part"):
        import_split(registry, "toy", bad_cols, "x")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("image_key,part\np0000/img0.png,train\nnope1.png,test\nnope2.png,val\n")
    with pytest.raises(InputError, match=r"names 2 image key\(s\) that dataset 'toy' does not have \(e.g. nope1.png, nope2.png\)"):
        import_split(registry, "toy", unknown, "x")
    with registry.session() as s:
        key0, key1 = s.scalars(select(Image.key).where(Image.patient_id == "P0001").order_by(Image.key)).all()[:2]
    leak = tmp_path / "leak.csv"
    leak.write_text(f"image_key,part\n{key0},train\n{key1},test\n")
    with pytest.raises(SplitLeakage, match=r"puts 1 patient\(s\) in more than one part \(P0001\) - refused"):
        import_split(registry, "toy", leak, "x")
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Split)) == 0
        assert s.scalar(select(func.count()).select_from(SplitAssignment)) == 0


def test_official_split_moves_test_patients_and_takes_val_by_patient(registry):
    # patients 0-29 official test; patient 30 has images in train and test (rows below)
    add_dataset(registry, official=lambda p: "test" if p < 30 else "train")
    with registry.session() as s:
        imgs = s.scalars(select(Image).where(Image.patient_id == "P0031").order_by(Image.id)).all()
        imgs[0].official_part = "test"
        n31 = len(imgs)
    info = official_split(registry, "toy", val=0.1, seed=0)
    rows = assignment(registry, info["id"])
    assert info["method"] == "official" and info["name"] == "official"
    assert {part for pid, part in rows.values() if pid == "P0031"} == {"test"}
    assert {part for pid, part in rows.values() if pid < "P0030"} == {"test"}
    assert info["parts"]["val"]["n_images"] > 0
    if n31 > 1:
        assert any("moved" in n for n in info["notes"])


def test_official_split_needs_official_parts(registry):
    add_dataset(registry)
    with pytest.raises(InputError, match="dataset 'toy' has no official split .* vitmed split toy"):
        official_split(registry, "toy")


def test_fractions_validated():
    with pytest.raises(ConfigError):
        make_split(None, "toy", val=0.5, test=0.5)


# ----------------------------------------------------------------------------- CLI

def run(url, *args):
    return CliRunner().invoke(app, ["--db", url, *args])


def _one_line_error(result, text):
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == f"Error: {text}"
    assert "Traceback" not in result.output


def test_cli_split_json_and_export(registry, sqlite_url, tmp_path):
    add_dataset(registry)
    res = run(sqlite_url, "split", "toy", "--seed", "1", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["name"] == "patient-s1"
    assert set(info["parts"]) == {"train", "val", "test"}
    assert info["parts"]["test"]["positives"]["Cardiomegaly"] > 0
    res = run(sqlite_url, "split", "toy", "--export", "patient-s1")
    assert res.exit_code == 0
    assert res.stdout.splitlines()[0] == "image_key,patient_id,part"
    out = tmp_path / "s.csv"
    res = run(sqlite_url, "split", "toy", "--export", "patient-s1", "--out", str(out))
    assert res.exit_code == 0 and out.read_text() == export_split(registry, "toy", "patient-s1")
    res = run(sqlite_url, "split", "toy", "--import", str(out), "--name", "copy", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["method"] == "import"
    res = run(sqlite_url, "split", "toy", "--seed", "1")
    _one_line_error(res, "dataset 'toy' already has a split named 'patient-s1' - choose another "
                         "--name or pass --replace to overwrite it")


def test_cli_errors(registry, sqlite_url, tmp_path):
    add_dataset(registry)
    _one_line_error(
        run(sqlite_url, "split", "toy", "--val", "0.5", "--test", "0.6"),
        "--val and --test must each be >= 0 and add up to less than 1 (got --val 0.5 --test 0.6) - "
        "e.g. --val 0.1 --test 0.2",
    )
    _one_line_error(run(sqlite_url, "split", "toy", "--val", "-0.1"),
                    "--val and --test must each be >= 0 and add up to less than 1 (got --val -0.1 "
                    "--test 0.2) - e.g. --val 0.1 --test 0.2")
    _one_line_error(run(sqlite_url, "split", "nosuch"), "unknown dataset 'nosuch' (known: toy)")
    f = tmp_path / "s.csv"
    f.write_text("image_key,part\n")
    _one_line_error(run(sqlite_url, "split", "toy", "--import", str(f)),
                    "--import needs --name S: the name to store the imported split under")
    _one_line_error(run(sqlite_url, "split", "toy", "--official", "--export", "x"),
                    "--official and --export cannot be combined - use one per command")
    _one_line_error(run(sqlite_url, "split", "toy", "--official"),
                    "dataset 'toy' has no official split (no image has an official part) - make a "
                    "random patient-level split with: vitmed split toy")
    _one_line_error(run(sqlite_url, "split", "toy", "--export", "nope"),
                    "dataset 'toy' has no split 'nope' (run: vitmed split toy)")
    assert run(sqlite_url, "split", "toy", "--seed", "3").exit_code == 0
    missing = tmp_path / "missing" / "x.csv"  # a missing folder is made, as for every output file
    assert run(sqlite_url, "split", "toy", "--export", "patient-s3", "--out", str(missing)).exit_code == 0
    assert missing.read_text().startswith("image_key,")
    (tmp_path / "afile").write_text("")
    under_file = tmp_path / "afile" / "x.csv"
    _one_line_error(run(sqlite_url, "split", "toy", "--export", "patient-s3", "--out", str(under_file)),
                    f"cannot create the folder of --out {under_file}: File exists - choose a writable place")


def test_split_of_an_ingested_synthetic_dataset(registry, tmp_path):
    from vitmed_cli.datasets import ingest_dataset
    from vitmed_cli.datasets.formats.synthetic import write_synthetic

    csv_path = write_synthetic(tmp_path / "syn", n_images=90, seed=2, image_size=64)
    ingest_dataset(registry, "csv", csv_path, name="syn", image_size=32, workers=1)
    info = make_split(registry, "syn", val=0.15, test=0.25, seed=0)
    rows = assignment(registry, info["id"])
    assert len(rows) == 90  # laterals are assigned with their patient
    parts_of: dict[str, set] = {}
    for pid, part in rows.values():
        parts_of.setdefault(pid, set()).add(part)
    assert all(len(v) == 1 for v in parts_of.values()) and len(parts_of) > 20
    for part in ("train", "val", "test"):
        assert all(n > 0 for n in info["parts"][part]["positives"].values()), info["parts"]


def test_split_warns_of_no_val_part_and_of_findings_without_positives_in_val_or_test(registry):
    add_dataset(registry, n_patients=120, seed=3)
    from vitmed_cli.registry.models import Finding, Label

    with registry.session() as s:  # "Rare Thing": positive in one patient's images only
        rare = s.scalar(select(Finding.id).where(Finding.canonical == "Rare Thing"))
        one = s.scalars(select(Image.id).where(Image.patient_id == "P0001")).all()
        s.execute(update(Label).where(Label.finding_id == rare).values(value=0))
        s.execute(update(Label).where(Label.finding_id == rare, Label.image_id.in_(one)).values(value=1))
        s.execute(update(Image).values(cache_index=Image.id))  # as if cached: parts are used
    none = make_split(registry, "toy", val=0.0, test=0.2, seed=0, name="noval")
    assert none["warnings"][0].startswith("no validation part (`val` 0) - finetune chooses the best epoch")
    said_val = 0
    for seed in range(6):
        small = make_split(registry, "toy", val=0.05, test=0.2, seed=seed, name=f"small{seed}")
        said_val += _check_missing_positive_warnings(registry, small)
    assert said_val  # a rare finding (2% of patients) misses the val part of some of these splits


def _check_missing_positive_warnings(registry, small) -> int:
    """The warnings equal an independent count: findings with a training positive, none in val/test."""
    from vitmed_cli.registry.models import Finding, Label

    with registry.session() as s:
        rows = s.execute(
            select(SplitAssignment.part, Finding.canonical)
            .join(Label, Label.image_id == SplitAssignment.image_id)
            .join(Finding, Finding.id == Label.finding_id)
            .where(SplitAssignment.split_id == small["id"], Label.value == 1)
        ).all()
    pos = {(part, f) for part, f in rows}
    for part in ("val", "test"):
        missing = [f for f in FINDINGS if ("train", f) in pos and (part, f) not in pos]
        said = [w for w in small["warnings"] if w.startswith(f"the {part} part has no positive image of")]
        if missing:
            assert said == [f"the {part} part has no positive image of {', '.join(missing)} - "
                            + ("their validation AUC is not defined" if part == "val" else "they cannot be scored")
                            + f"; a larger `{part}` fraction may give them some"]
        else:
            assert said == []
    return any(w.startswith("the val part has no positive image of") for w in small["warnings"])
