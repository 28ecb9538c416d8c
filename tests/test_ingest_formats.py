"""``ingest_dataset`` on small fixture folders in each dataset's published layout."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from vitmed_cli.datasets import export_labels, ingest_dataset, read_dataset, view_of
from vitmed_cli.datasets.formats.padchest import parse_padchest_labels
from vitmed_cli.datasets.dicom import write_dicom
from vitmed_cli.errors import AlreadyExists, InputError
from vitmed_cli.datasets.findings import canonical_name, harmonise
from vitmed_cli.datasets.cache import load_image
from vitmed_cli.registry.models import Dataset, Finding, Image, Label

SIZE = 32


def _images(registry, name):
    with registry.session() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == name))
        rows = s.scalars(select(Image).where(Image.dataset_id == ds.id).order_by(Image.id)).all()
        return ds, {r.key: r for r in rows}


def _labels(registry, name) -> dict[tuple[str, str], int]:
    with registry.session() as s:
        q = (
            select(Image.key, Finding.canonical, Label.value)
            .join(Label, Label.image_id == Image.id)
            .join(Finding, Finding.id == Label.finding_id)
            .join(Dataset, Dataset.id == Image.dataset_id)
            .where(Dataset.name == name)
        )
        return {(k, f): v for k, f, v in s.execute(q)}


def _cache(ds):
    return np.load(ds.cache_path, mmap_mode="r")


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(arr).save(path)


def _jpg(path: Path, value: int, shape=(80, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.full(shape, value, dtype=np.uint8)).save(path, quality=95)


# --- VinDr-CXR ---------------------------------------------------------------

VINDR_TRAIN_COLS = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
    "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding",
]


@pytest.fixture
def vindr_dir(tmp_path) -> Path:
    root = tmp_path / "vindr-cxr" / "1.0.0"
    (root / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(0)
    votes = {  # image -> finding -> three radiologists
        "aaa111": {"Cardiomegaly": (1, 1, 0), "Pleural effusion": (1, 0, 0)},
        "bbb222": {"Nodule/Mass": (0, 0, 1)},
        "ccc333": {},  # its file is truncated
    }
    rows = []
    for image_id, marks in votes.items():
        for r, rad in enumerate(("R8", "R9", "R10")):
            row = {"image_id": image_id, "rad_id": rad, **{c: 0 for c in VINDR_TRAIN_COLS}}
            for finding, three in marks.items():
                row[finding] = three[r]
            if not marks:
                row["No finding"] = 1
            rows.append(row)
    pd.DataFrame(rows).to_csv(root / "annotations" / "image_labels_train.csv", index=False)
    test_cols = [c if c != "Other diseases" else "Other disease" for c in VINDR_TRAIN_COLS]
    test_rows = [
        {"image_id": "ddd444", **{c: 0 for c in test_cols}, "Other disease": 1},
        {"image_id": "eee555", **{c: 0 for c in test_cols}, "Pneumothorax": 1},
    ]
    pd.DataFrame(test_rows, columns=["image_id", *test_cols]).to_csv(
        root / "annotations" / "image_labels_test.csv", index=False
    )
    for part, ids in (("train", ["aaa111", "bbb222", "ccc333"]), ("test", ["ddd444", "eee555"])):
        (root / part).mkdir()
        for i in ids:
            px = rng.integers(0, 4096, size=(96, 80)).astype(np.uint16)
            photometric = "MONOCHROME1" if i == "bbb222" else "MONOCHROME2"
            write_dicom(root / part / f"{i}.dicom", px, photometric=photometric, window=(2048, 4096),
                        slope=1.0, intercept=0.0)
    bad = root / "train" / "ccc333.dicom"
    bad.write_bytes(bad.read_bytes()[:600])
    return root


@pytest.mark.parametrize("policy", ["majority", "any"])
def test_vindr_layout_policies_and_quirks(any_registry, vindr_dir, policy):
    registry = any_registry
    s = ingest_dataset(registry, "vindr", vindr_dir, name="vindr", image_size=SIZE, workers=1,
                       label_policy=policy if policy != "majority" else None)
    assert (s.n_images, s.n_ingested, s.n_unreadable, s.n_patients) == (5, 4, 1, None)
    assert any("no patient identifier" in n for n in s.notes)
    assert any("MONOCHROME1" in n for n in s.notes)
    ds, imgs = _images(registry, "vindr")
    assert ds.has_patient_ids is False and ds.label_policy == policy
    assert imgs["aaa111"].official_part == "train" and imgs["ddd444"].official_part == "test"
    assert all(i.patient_id is None for i in imgs.values())
    bad = imgs["ccc333"]
    assert bad.readable is False and bad.cache_index is None and "ccc333.dicom" in bad.error
    good = imgs["aaa111"]
    assert np.array_equal(_cache(ds)[good.cache_index], load_image(good.source_path, SIZE))
    labels = _labels(registry, "vindr")
    assert labels[("aaa111", "Cardiomegaly")] == 1  # 2 of 3
    assert labels[("aaa111", "Pleural Effusion")] == (1 if policy == "any" else 0)  # 1 of 3
    assert labels[("bbb222", "Nodule/Mass")] == (1 if policy == "any" else 0)
    # "Other disease" (test) and "Other diseases" (train) are one finding
    with registry.session() as sess:
        names = sess.scalars(select(Finding.canonical).where(Finding.dataset_id == ds.id)).all()
    assert len(names) == 28 and names.count("Other Disease") == 1
    assert labels[("ddd444", "Other Disease")] == 1 and labels[("aaa111", "Other Disease")] == 0


# --- CheXpert ----------------------------------------------------------------

CHEX_FINDINGS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]


@pytest.fixture
def chexpert_parent(tmp_path) -> Path:
    parent = tmp_path / "downloads"
    root = parent / "CheXpert-v1.0-small"
    rows = {
        "train.csv": [
            ("train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP", {"Cardiomegaly": "1.0", "Edema": "-1.0"}),
            ("train/patient00001/study1/view2_lateral.jpg", "Female", 68, "Lateral", "", {"Cardiomegaly": "1.0"}),
            ("train/patient00002/study1/view1_frontal.jpg", "Male", 87, "Frontal", "PA", {"No Finding": "1.0", "Pleural Effusion": "0.0"}),
            ("train/patient00002/study2/view1_frontal.jpg", "Male", 88, "Frontal", "PA", {"Pleural Effusion": "-1.0"}),
        ],
        "valid.csv": [
            ("valid/patient64541/study1/view1_frontal.jpg", "Male", 73, "Frontal", "AP", {f: "0.0" for f in CHEX_FINDINGS}),
        ],
    }
    root.mkdir(parents=True)
    for name, items in rows.items():
        recs = []
        for i, (rel, sex, age, fl, appa, labels) in enumerate(items):
            recs.append({"Path": f"CheXpert-v1.0-small/{rel}", "Sex": sex, "Age": age, "Frontal/Lateral": fl,
                         "AP/PA": appa, **{f: labels.get(f, "") for f in CHEX_FINDINGS}})
            _jpg(root / rel, 60 + 30 * i)
        pd.DataFrame(recs).to_csv(root / name, index=False)
    return parent


def test_chexpert_from_parent_or_dataset_folder(any_registry, chexpert_parent):
    registry = any_registry
    s = ingest_dataset(registry, "chexpert", chexpert_parent, name="chex", image_size=SIZE, workers=1)
    assert (s.n_images, s.n_ingested, s.n_unreadable, s.n_patients) == (5, 5, 0, 3)
    ds, imgs = _images(registry, "chex")
    lat = imgs["train/patient00001/study1/view2_lateral.jpg"]
    assert lat.view == "lateral" and lat.patient_id == "patient00001" and lat.study_id == "patient00001/study1"
    front = imgs["train/patient00002/study2/view1_frontal.jpg"]
    assert front.view == "frontal" and front.view_native == "PA" and front.age == 88 and front.sex == "Male"
    assert imgs["valid/patient64541/study1/view1_frontal.jpg"].official_part == "val"
    labels = _labels(registry, "chex")
    assert labels[("train/patient00001/study1/view1_frontal.jpg", "Edema")] == -1
    assert labels[("train/patient00002/study2/view1_frontal.jpg", "Pleural Effusion")] == -1
    assert ("train/patient00001/study1/view1_frontal.jpg", "Pneumonia") not in labels  # blank = no row
    assert sum(1 for (k, _f) in labels if k.startswith("valid/")) == 14
    # The same download named by its own folder resolves the same files.
    s2 = ingest_dataset(registry, "chexpert", chexpert_parent / "CheXpert-v1.0-small", name="chex2",
                        image_size=SIZE, workers=1)
    assert (s2.n_images, s2.n_ingested) == (5, 5)


# --- MIMIC-CXR-JPG -------------------------------------------------------------


def _gz_csv(path: Path, df: pd.DataFrame) -> None:
    with gzip.open(path, "wt", newline="") as fh:
        df.to_csv(fh, index=False)


@pytest.fixture
def mimic_dir(tmp_path) -> Path:
    root = tmp_path / "mimic-cxr-jpg" / "2.0.0"
    root.mkdir(parents=True)
    images = [  # dicom_id, subject, study, view, split
        ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267", "PA", "train"),
        ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "50414267", "LATERAL", "train"),
        ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "10000032", "53189527", "AP", "validate"),
        ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "10000764", "57375967", "", "test"),
    ]
    meta = pd.DataFrame(
        [{"dicom_id": d, "subject_id": s, "study_id": st, "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
          "ViewPosition": v, "Rows": 80, "Columns": 64, "StudyDate": 21800506, "StudyTime": 213014.531,
          "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)", "ViewCodeSequence_CodeMeaning": "",
          "PatientOrientationCodeSequence_CodeMeaning": "Erect"} for d, s, st, v, _ in images]
    )
    labels = pd.DataFrame(
        [
            {"subject_id": "10000032", "study_id": "50414267", **{f: "" for f in CHEX_FINDINGS},
             "Pleural Effusion": "1.0", "Atelectasis": "-1.0"},
            {"subject_id": "10000032", "study_id": "53189527", **{f: "" for f in CHEX_FINDINGS}, "No Finding": "1.0"},
        ]  # study 57375967 has no labels row
    )[["subject_id", "study_id", *sorted(CHEX_FINDINGS)]]
    split = pd.DataFrame([{"dicom_id": d, "study_id": st, "subject_id": s, "split": sp} for d, s, st, _v, sp in images])
    _gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", meta)
    _gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", labels)
    _gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz", split)
    for i, (d, s, st, _v, _sp) in enumerate(images):
        _jpg(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg", 40 + 40 * i)
    return root


def test_mimic_gz_csvs_study_labels_views_and_split(any_registry, mimic_dir):
    registry = any_registry
    s = ingest_dataset(registry, "mimic", mimic_dir, name="mimic", image_size=SIZE, workers=1)
    assert (s.n_images, s.n_ingested, s.n_unreadable, s.n_patients) == (4, 4, 0, 2)
    ds, imgs = _images(registry, "mimic")
    a, b, c, d = (imgs[k] for k in sorted(imgs, key=lambda k: imgs[k].id))
    assert (a.view, b.view, c.view, d.view) == ("frontal", "lateral", "frontal", "unknown")
    assert (a.official_part, c.official_part, d.official_part) == ("train", "val", "test")
    assert a.patient_id == "10000032" and a.study_id == "50414267"
    labels = _labels(registry, "mimic")
    for img in (a, b):  # study labels joined to each image of the study
        assert labels[(img.key, "Pleural Effusion")] == 1 and labels[(img.key, "Atelectasis")] == -1
    assert labels[(c.key, "No Finding")] == 1
    assert not any(k == d.key for k, _ in labels)
    assert any("without a labels row" in n for n in s.notes)
    # pixel value of a JPEG survives draft decoding
    assert abs(int(_cache(ds)[a.cache_index][SIZE // 2, SIZE // 2]) - 40) <= 2


# --- NIH ChestX-ray14 ---------------------------------------------------------

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")


@pytest.fixture
def nih_dir(tmp_path) -> Path:
    root = tmp_path / "ChestXray-NIHCC"
    rows = [
        ("00000001_000.png", "Cardiomegaly|Effusion", 0, 1, 58, "M", "PA", "images_001"),
        ("00000001_001.png", "No Finding", 1, 1, 58, "M", "PA", "images_001"),
        ("00000002_000.png", "Hernia", 0, 2, 81, "F", "AP", "images_002"),
        ("00000003_000.png", "Pleural_Thickening|Mass", 0, 3, 74, "F", "PA", "images_002"),
        ("00000004_000.png", "No Finding", 0, 4, 40, "F", "PA", None),  # file missing
    ]
    text = NIH_HEADER + "".join(f"{n},{lab},{fu},{pid},{age},{sex},{vp},2500,2048,0.143,0.143\n"
                                for n, lab, fu, pid, age, sex, vp, _ in rows)
    root.mkdir()
    (root / "Data_Entry_2017_v2020.csv").write_text(text)
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000004_000.png\n")
    (root / "test_list.txt").write_text("00000002_000.png\n00000003_000.png\n")
    for i, (n, *_rest, folder) in enumerate(rows):
        if folder:
            _png(root / folder / "images" / n, np.full((70, 70, 4), 50 + i * 30, dtype=np.uint8))  # RGBA like NIH
    return root


def test_cxr14_images_0nn_layout_explicit_labels_and_lists(any_registry, nih_dir):
    registry = any_registry
    s = ingest_dataset(registry, "cxr14", nih_dir, name="nih", image_size=SIZE, workers=2)
    assert (s.n_images, s.n_ingested, s.n_unreadable, s.n_patients) == (5, 4, 1, 4)
    assert s.findings[:3] == ["Atelectasis", "Cardiomegaly", "Pleural Effusion"] and len(s.findings) == 14
    assert "Pleural Thickening" in s.findings and s.unmapped_findings == []
    ds, imgs = _images(registry, "nih")
    assert imgs["00000002_000.png"].official_part == "test" and imgs["00000001_001.png"].official_part == "train"
    assert imgs["00000001_000.png"].age == 58 and imgs["00000002_000.png"].view_native == "AP"
    assert "not found" in imgs["00000004_000.png"].error
    labels = _labels(registry, "nih")
    assert len(labels) == 5 * 14  # every finding explicit 0/1
    assert labels[("00000001_000.png", "Pleural Effusion")] == 1 and labels[("00000001_001.png", "Cardiomegaly")] == 0
    assert labels[("00000003_000.png", "Mass")] == 1 and labels[("00000003_000.png", "Nodule")] == 0
    cache = _cache(ds)
    for key, value in (("00000001_000.png", 50), ("00000003_000.png", 140)):
        assert int(cache[imgs[key].cache_index][SIZE // 2, SIZE // 2]) == value


# --- PadChest -----------------------------------------------------------------


@pytest.fixture
def padchest_dir(tmp_path) -> Path:
    root = tmp_path / "PADCHEST_SJ"
    rows = [
        ("216840111366964012283393834152009033102258826_00-141-160.png", "0", "216840111366964012283393834152009033102258826",
         "199977652104183101926373426291893722000", "PA", "['pleural effusion', 'cardiomegaly']"),
        ("216840111366964012283393834152009033140208626_00-059-087.png", "0", "216840111366964012283393834152009033102258826",
         "199977652104183101926373426291893722000", "L", "['pleural effusion', 'cardiomegaly']"),
        ("216840111366964012339356563862009072111404053_00-043-192.png", "1", "216840111366964012339356563862009068084200743",
         "263101101106220066617380813031208023513", "AP_horizontal", "[' normal ', '']"),
        ("216840111366964012373310883942009152114636712_00-102-045.png", "1", "216840111366964012373310883942009117084022290",
         "316102124005320097819451014100152077414", "COSTAL", "['calcified granuloma', 'pleural effusion', 'exclude']"),
        ("216840111366964012373310883942009152114636713_00-102-046.png", "54", "216840111366964012373310883942009117084022290",
         "316102124005320097819451014100152077414", "PA", float("nan")),
    ]
    df = pd.DataFrame(rows, columns=["ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Labels"])
    df["StudyDate_DICOM"] = "20090331"
    df["PatientBirth"] = "1939.0"
    df["PatientSex_DICOM"] = "F"
    df["PhotometricInterpretation_DICOM"] = ["MONOCHROME2", "MONOCHROME2", "MONOCHROME1", "MONOCHROME2", ""]
    df["ViewPosition_DICOM"] = df["Projection"]
    df["MethodProjection"] = "Manual review of DICOM fields"
    df["Localizations"] = "[]"
    df["labelCUIS"] = "[]"
    root.mkdir()
    with gzip.open(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", "wt", newline="") as fh:
        df.to_csv(fh, index=False)
    rng = np.random.default_rng(3)
    for i, (image_id, image_dir, *_rest) in enumerate(rows):
        arr = np.full((60, 64), 1000 * (i + 1), dtype=np.uint16)
        arr[:, 32:] += 3000 + int(rng.integers(0, 100))
        _png(root / image_dir / image_id, arr)
    (root / "1" / rows[3][0]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def test_padchest_long_ids_labels_and_projections(any_registry, padchest_dir):
    registry = any_registry
    s = ingest_dataset(registry, "padchest", padchest_dir, name="pad", image_size=SIZE, workers=1)
    assert (s.n_images, s.n_ingested, s.n_unreadable, s.n_patients) == (5, 4, 1, 3)
    assert set(s.findings) == {"Pleural Effusion", "Cardiomegaly", "No Finding", "calcified granuloma", "exclude"}
    assert s.unmapped_findings == ["calcified granuloma", "exclude"]
    ds, imgs = _images(registry, "pad")
    # study-level labels stay findings but are named for training to skip; the blank Labels row is listed
    assert ds.options["non_findings"] == ["exclude"]  # 'normal' -> "No Finding" is a label
    assert ds.options["unlabelled_keys"] == ["216840111366964012373310883942009152114636713_00-102-046.png"]
    assert any("blank Labels" in n for n in s.notes) and any("MONOCHROME1" in n for n in s.notes)
    # the note speaks of the images, not of an internal option name
    assert not any("options[" in n for n in s.notes)
    first = imgs["216840111366964012283393834152009033102258826_00-141-160.png"]
    assert first.patient_id == "199977652104183101926373426291893722000"  # exact digits, never a float
    assert first.study_id == "216840111366964012283393834152009033102258826"
    assert first.age == 70 and first.view == "frontal"
    views = sorted(i.view_native + ":" + i.view for i in imgs.values())
    assert views == ["AP_horizontal:frontal", "COSTAL:unknown", "L:lateral", "PA:frontal", "PA:frontal"]
    labels = _labels(registry, "pad")
    assert labels[(first.key, "Pleural Effusion")] == 1 and labels[(first.key, "Cardiomegaly")] == 1
    assert labels[("216840111366964012339356563862009072111404053_00-043-192.png", "No Finding")] == 1
    assert len(labels) == 8  # positives only; the NaN Labels row has none
    assert not any(k == "216840111366964012373310883942009152114636713_00-102-046.png" for k, _ in labels)
    c = _cache(ds)[first.cache_index]
    assert c[SIZE // 2, 2] == 0 and c[SIZE // 2, SIZE - 3] == 255  # own 16-bit range stretched
    assert c[0].max() == 0  # 60x64 -> 30x32 centred on black
    m1 = _cache(ds)[imgs["216840111366964012339356563862009072111404053_00-043-192.png"].cache_index]
    assert m1[SIZE // 2, 2] == 255 and m1[SIZE // 2, SIZE - 3] == 0  # MONOCHROME1 source: inverted
    assert m1[0].max() == 0  # ... before the black padding


# --- vocabulary and small parsers ----------------------------------------------


def test_effusion_spellings_share_one_canonical_name():
    assert {canonical_name(n) for n in ("Pleural effusion", "Pleural Effusion", "Effusion", "pleural effusion")} == {
        "Pleural Effusion"
    }
    fmap = harmonise(["Effusion", "Weird Thing", "Pleural_Thickening"])
    assert fmap.canonical == ["Pleural Effusion", "Weird Thing", "Pleural Thickening"]
    assert fmap.unmapped == ("Weird Thing",)


def test_padchest_label_parser_and_view_codes():
    assert parse_padchest_labels("['pleural effusion', ' cardiomegaly', '']") == ["pleural effusion", "cardiomegaly"]
    assert parse_padchest_labels("[]") == [] and parse_padchest_labels(float("nan")) is None
    assert parse_padchest_labels("['normal'") == ["normal"]  # unbalanced bracket still read
    frontal = ("PA", "AP", "AP_horizontal", "AP AXIAL", "PA LLD", "AP LLD", "AP RLD", "PA RLD", "Frontal")
    lateral = ("L", "LL", "LATERAL", "RL", "XTABLE LATERAL", "Lateral")
    unknown = ("LAO", "RAO", "LPO", "COSTAL", "EXCLUDE", "UNK", "SWIMMERS", "", " ", None, float("nan"))
    assert {view_of(v) for v in frontal} == {"frontal"}
    assert {view_of(v) for v in lateral} == {"lateral"}
    assert {view_of(v) for v in unknown} == {"unknown"}


def test_export_labels_csv(any_registry, nih_dir, tmp_path):
    registry = any_registry
    ingest_dataset(registry, "cxr14", nih_dir, name="nih", image_size=SIZE, workers=1)
    out = tmp_path / "nih.csv"
    info = export_labels(registry, "nih", out)
    df = pd.read_csv(out, dtype=str)
    assert info["n_images"] == 5 and list(df.columns[:3]) == ["key", "patient_id", "view"]
    row = df.set_index("key").loc["00000001_000.png"]
    assert row["Pleural Effusion"] == "1" and row["Hernia"] == "0" and row["patient_id"] == "1"


# --- blank identifier cells and coded ages --------------------------------------


def _blank_cell(path: Path, row: int, column: str) -> None:
    """Empty one cell of a (possibly gzipped) fixture CSV, keeping everything as text."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as fh:
        df = pd.read_csv(fh, dtype=str, keep_default_na=False)
    df.loc[row, column] = ""
    with opener(path, "wt", newline="") as fh:
        df.to_csv(fh, index=False)


@pytest.mark.parametrize(
    "fmt, fixture, relpath, row, column",
    [
        ("mimic", "mimic_dir", "mimic-cxr-2.0.0-metadata.csv.gz", 2, "subject_id"),
        ("mimic", "mimic_dir", "mimic-cxr-2.0.0-metadata.csv.gz", 1, "dicom_id"),
        ("mimic", "mimic_dir", "mimic-cxr-2.0.0-metadata.csv.gz", 3, "study_id"),
        ("padchest", "padchest_dir", "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", 1, "ImageDir"),
        ("padchest", "padchest_dir", "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", 4, "ImageID"),
        ("cxr14", "nih_dir", "Data_Entry_2017_v2020.csv", 2, "Image Index"),
        ("chexpert", "chexpert_parent", "CheXpert-v1.0-small/train.csv", 3, "Path"),
    ],
)
def test_blank_id_cell_names_file_line_and_column(request, fmt, fixture, relpath, row, column):
    root = request.getfixturevalue(fixture)
    _blank_cell(root / relpath, row, column)
    with pytest.raises(InputError) as err:
        read_dataset(fmt, root)
    msg = str(err.value)
    assert msg.startswith(f"{root / relpath}: line {row + 2} has an empty {column!r} - every row needs one")
    assert "\n" not in msg


def test_blank_id_is_a_one_line_cli_error_and_writes_nothing(tmp_path, nih_dir):
    from typer.testing import CliRunner

    from vitmed_cli.cli import app
    from vitmed_cli.registry.db import open_registry

    _blank_cell(nih_dir / "Data_Entry_2017_v2020.csv", 0, "Image Index")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    result = CliRunner().invoke(app, ["--db", url, "ingest", "cxr14", str(nih_dir), "--name", "nih"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [f"Error: {nih_dir / 'Data_Entry_2017_v2020.csv'}: line 2 has an empty 'Image Index' - every row "
                     "needs one (the PNG file name); fill it in or delete the row"]
    with open_registry(url).session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0


def test_cxr14_coded_ages_become_years(nih_dir):
    path = nih_dir / "Data_Entry_2017_v2020.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df["Patient Age"] = ["045Y", "003M", "010D", "58", ""]
    df.to_csv(path, index=False)
    ages = read_dataset("cxr14", nih_dir).images["age"].tolist()
    assert ages[:4] == pytest.approx([45.0, 3 / 12, 10 / 365, 58.0]) and np.isnan(ages[4])


# --- changed labels, bad label cells, wrong VinDr columns ------------------------------------


def test_vindr_reingest_with_a_new_finding_column_is_refused(registry, vindr_dir):
    ingest_dataset(registry, "vindr", vindr_dir, name="vindr", image_size=SIZE, workers=1)
    before = _labels(registry, "vindr")
    csv_path = vindr_dir / "annotations" / "image_labels_test.csv"
    df = pd.read_csv(csv_path, dtype=str)
    df["Lung nodule"] = ["1", "0"]
    df.to_csv(csv_path, index=False)
    with pytest.raises(AlreadyExists) as err:
        ingest_dataset(registry, "vindr", vindr_dir, name="vindr", image_size=SIZE, workers=1)
    assert str(err.value) == (
        "dataset 'vindr' is registered with different labels: 0 image x finding labels differ and 1 findings "
        "are new (Lung nodule) - ingest under a new `name`, or delete it first with vitmed datasets delete vindr"
    )
    df = df.drop(columns="Lung nodule")
    df.loc[1, "Pneumothorax"] = "0"  # eee555 was 1
    df.to_csv(csv_path, index=False)
    with pytest.raises(AlreadyExists, match=r"1 image x finding labels differ \(e.g. eee555: Pneumothorax 1 -> 0\) "
                                         r"and 0 findings are new"):
        ingest_dataset(registry, "vindr", vindr_dir, name="vindr", image_size=SIZE, workers=1)
    assert _labels(registry, "vindr") == before


def test_vindr_labels_csv_without_finding_columns_is_refused(vindr_dir):
    csv_path = vindr_dir / "annotations" / "image_labels_train.csv"
    pd.DataFrame({"image_id": ["aaa111"], "rad_id": ["R8"], "class_name": ["Aortic enlargement"],
                  "x_min": ["1"]}).to_csv(csv_path, index=False)
    with pytest.raises(InputError) as err:
        read_dataset("vindr", vindr_dir)
    assert str(err.value).startswith(
        f"{csv_path} has none of the VinDr-CXR finding columns (e.g. Aortic enlargement, Atelectasis, "
        "Calcification, Cardiomegaly, ..., No finding); it has: class_name, x_min - "
    )
    pd.DataFrame({"image_id": ["aaa111"], "Cardiomegaly": ["1"]}).to_csv(csv_path, index=False)
    with pytest.raises(InputError, match=r"is missing column\(s\) rad_id - expected image_id, rad_id; "
                                         r"the file has: image_id, Cardiomegaly"):
        read_dataset("vindr", vindr_dir)


def test_bad_label_cells_name_file_line_column_and_value(chexpert_parent, mimic_dir, vindr_dir):
    train = chexpert_parent / "CheXpert-v1.0-small" / "train.csv"
    df = pd.read_csv(train, dtype=str, keep_default_na=False)
    df.loc[2, "Edema"] = "1.O"
    df.to_csv(train, index=False)
    with pytest.raises(InputError) as err:
        read_dataset("chexpert", chexpert_parent)
    assert str(err.value) == (f"{train}: line 4, column 'Edema' has '1.O' - finding columns take 1, 0, -1 "
                              "(uncertain) or blank; correct the cell")
    labels_gz = mimic_dir / "mimic-cxr-2.0.0-chexpert.csv.gz"
    lab = pd.read_csv(labels_gz, dtype=str, keep_default_na=False)
    lab.loc[len(lab)] = lab.iloc[0]  # a duplicate study row (dropped) keeps line numbers honest
    lab.loc[len(lab)] = {**lab.iloc[1].to_dict(), "study_id": "57375967", "Pneumonia": "2"}
    _gz_csv(labels_gz, lab)
    with pytest.raises(InputError, match=r"chexpert.csv.gz: line 5, column 'Pneumonia' has '2' - "):
        read_dataset("mimic", mimic_dir)
    vindr_csv = vindr_dir / "annotations" / "image_labels_train.csv"
    v = pd.read_csv(vindr_csv, dtype=str)
    v.loc[4, "Pneumothorax"] = "yes"
    v.to_csv(vindr_csv, index=False)
    with pytest.raises(InputError, match=r"image_labels_train.csv: line 6, column 'Pneumothorax' has 'yes'"):
        read_dataset("vindr", vindr_dir)


def test_unrecognised_view_codes_are_named_in_the_notes(registry, tmp_path):
    from PIL import Image as PILImage

    from vitmed_cli.datasets import ingest_dataset

    rows = ["path,patient_id,view,Cardiomegaly"]
    for i, view in enumerate(["PA", "LATERAL", "LAO", "SWIMMERS"]):
        PILImage.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,p{i},{view},{i % 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    summary = ingest_dataset(registry, "csv", tmp_path / "labels.csv", name="views", image_size=16,
                             workers=1)
    note = next(n for n in summary.notes if "neither frontal nor lateral" in n)
    assert note.startswith("2 image(s)") and "LAO" in note and "SWIMMERS" in note
