"""The synthetic chest X-ray generator: layout of its files, determinism, and that it is learnable."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from vitmed_cli.errors import ConfigError, InputError
from vitmed_cli.datasets.formats.synthetic import (
    FINDINGS,
    SHARED_FINDINGS,
    render_synthetic,
    synthetic_findings,
    write_synthetic,
)


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_files_columns_views_patients_and_determinism(tmp_path):
    csv_path = write_synthetic(tmp_path / "a", n_images=120, seed=7, image_size=64)
    assert csv_path == tmp_path / "a" / "labels.csv"
    rows = read_rows(csv_path)
    assert len(rows) == 120
    assert list(rows[0]) == ["path", "patient_id", "study_id", "view", "sex", "age", "part",
                             *FINDINGS["source"]]
    for r in rows:
        img = Image.open(csv_path.parent / r["path"])
        assert img.mode == "L" and img.size == (64, 64)
        assert r["view"] in {"PA", "AP", "LATERAL"} and r["sex"] in {"M", "F"}
        assert r["part"] == "" and 18 <= int(r["age"]) <= 90
        assert all(r[f] in {"0", "1"} for f in FINDINGS["source"])
    n_lat = sum(r["view"] == "LATERAL" for r in rows)
    assert 0.05 < n_lat / len(rows) < 0.3
    per_patient: dict[str, list] = {}
    for r in rows:
        per_patient.setdefault(r["patient_id"], []).append(r)
    sizes = [len(v) for v in per_patient.values()]
    assert max(sizes) <= 4 and sum(s >= 2 for s in sizes) >= len(sizes) - 1
    # findings persist within a patient: 0.9**2 + 0.1**2 = 0.82 expected agreement between
    # two images, against about 0.6 for two unrelated images at these prevalences
    same = [
        float(np.mean([a[f] == b[f] for f in FINDINGS["source"]]))
        for v in per_patient.values() for a, b in zip(v, v[1:])
    ]
    assert np.mean(same) > 0.74
    # every finding occurs, none is everywhere
    for f in FINDINGS["source"]:
        assert 0.1 < np.mean([r[f] == "1" for r in rows]) < 0.6
    # same seed -> identical files; another seed -> different ones
    again = write_synthetic(tmp_path / "b", n_images=120, seed=7, image_size=64)
    assert read_rows(again) == rows
    first = rows[0]["path"]
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    other = read_rows(write_synthetic(tmp_path / "c", n_images=120, seed=8, image_size=64))
    assert other != rows


def test_flavours_share_findings_and_differ_in_acquisition():
    src, tgt = synthetic_findings("source"), synthetic_findings("target")
    assert set(SHARED_FINDINGS) <= set(src) & set(tgt)
    assert set(src) != set(tgt)
    (rs, a), = render_synthetic(40, seed=0, flavour="source", image_size=64, batch=40)
    (rt, b), = render_synthetic(40, seed=0, flavour="target", image_size=64, batch=40)
    assert a.dtype == np.uint8 and a.shape == (40, 64, 64)
    # the target scanner renders with lower contrast and more noise
    assert a.astype(float).std() > b.astype(float).std()
    with pytest.raises(ConfigError, match="unknown synthetic flavour 'other' - use one of: source, target"):
        synthetic_findings("other")


def test_refuses_a_foreign_folder_and_bad_counts(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not empty and holds no labels.csv"):
        write_synthetic(tmp_path / "x", n_images=5)
    with pytest.raises(ConfigError, match="`n_images` must be at least 1"):
        write_synthetic(tmp_path / "y", n_images=0)


def _auc(y, s):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y, s)


def test_a_tiny_vit_learns_it():
    torch = pytest.importorskip("torch")
    from timm.models.vision_transformer import VisionTransformer

    size = 48
    rows, images = [], []
    for chunk, imgs in render_synthetic(600, seed=3, image_size=2 * size, batch=200):
        rows += chunk
        # 2x2 mean, as a resize to the cache size would average the detector noise
        images.append(imgs.reshape(-1, size, 2, size, 2).mean(axis=(2, 4)))
    images = np.concatenate(images)
    names = FINDINGS["source"]
    frontal = np.array([r["view"] != "LATERAL" for r in rows])
    patients = np.array([int(r["patient_id"][1:]) for r in rows])
    test = patients % 5 == 0  # held out by patient
    y = np.array([[r["labels"][f] for f in names] for r in rows], dtype=np.float32)
    x = (torch.tensor(images, dtype=torch.float32)[:, None] / 255.0 - 0.5) / 0.25
    tr = np.flatnonzero(frontal & ~test)
    te = np.flatnonzero(frontal & test)

    torch.manual_seed(0)
    model = VisionTransformer(img_size=size, patch_size=8, in_chans=1, num_classes=len(names),
                              embed_dim=64, depth=2, num_heads=2)
    epochs, batch = 18, 16
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * -(-len(tr) // batch),
                                                pct_start=0.1)
    yt = torch.tensor(y)
    model.train()
    for _ in range(epochs):
        perm = torch.tensor(tr)[torch.randperm(len(tr))]
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        scores = model(x[te]).numpy()
    aucs = {f: _auc(y[te, j], scores[:, j]) for j, f in enumerate(names)}
    assert aucs["Cardiomegaly"] >= 0.85, aucs
    assert np.mean(list(aucs.values())) >= 0.75, aucs
