"""The data path: loading a split part, the uncertain policy, the memmap batch loader.

The datasets come from :func:`helpers.build_dataset`.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from numpy.lib.format import open_memmap
from sqlalchemy import event, select

from vitmed_cli.datasets.loader import BatchLoader, _RotationMaps
from vitmed_cli.datasets.parts import apply_uncertain, load_part
from vitmed_cli.inference import model_input
from vitmed_cli.registry.models import Dataset, Image

from helpers import TOY_FINDINGS as FINDINGS
from helpers import build_dataset


# --------------------------------------------------------------------------- load_part


def test_load_part_reads_labels_and_drops_laterals_and_unreadable(registry, tmp_path):
    info = build_dataset(registry, tmp_path, n=120)
    statements: list[str] = []
    event.listen(registry.engine, "before_cursor_execute",
                 lambda *a: statements.append(a[2]))
    with registry.session() as s:
        part = load_part(s, "toy", None, "train")
    selects = [q for q in statements if q.lstrip().upper().startswith("SELECT")]
    # dataset, split, findings, images, labels: never one query per image
    assert len(selects) <= 6
    want = np.flatnonzero((info["parts"] == "train") & info["usable"])
    assert part.image_ids.tolist() == info["image_ids"][want].tolist()
    assert part.cache_rows.tolist() == want.tolist()
    assert part.findings == list(FINDINGS)
    np.testing.assert_array_equal(part.labels, info["labels"][want])
    assert np.isnan(part.labels).any() and (part.labels == -1).any()

    with registry.session() as s:
        with_lat = load_part(s, "toy", "default", "train", frontal_only=False)
    assert len(with_lat) > len(part)


def test_unknown_views_are_used_only_when_the_dataset_has_no_view_information(registry, tmp_path):
    info = build_dataset(registry, tmp_path, n=70)
    with registry.session() as s:
        mixed = load_part(s, "toy", None, "train")
        views = dict(s.execute(select(Image.id, Image.view)).all())
    assert {views[int(i)] for i in mixed.image_ids} == {"frontal"}  # 'unknown' may be lateral
    train_ids = info["image_ids"][info["parts"] == "train"]
    assert any(views[int(i)] == "unknown" for i in train_ids)  # there were some to leave out
    bare = build_dataset(registry, tmp_path / "bare", name="bare", n=70, all_unknown=True)
    with registry.session() as s:
        part = load_part(s, "bare", None, "train")
    want = np.flatnonzero((bare["parts"] == "train") & bare["usable"])
    assert part.image_ids.tolist() == bare["image_ids"][want].tolist()
    assert len(part) > len(mixed)


def test_images_without_label_information_are_left_out(registry, tmp_path):
    build_dataset(registry, tmp_path, n=60)
    with registry.session() as s:
        before = load_part(s, "toy", None, "train")
        drop = before.image_keys[:3]
        ds = s.scalar(select(Dataset).where(Dataset.name == "toy"))
        ds.options = {**(ds.options or {}), "unlabelled_keys": list(drop)}
    with registry.session() as s:
        after = load_part(s, "toy", None, "train")
    assert after.image_keys == before.image_keys[3:]
    assert len(after.labels) == len(before.labels) - 3


def test_apply_uncertain_policies():
    lab = np.array([[1, 0, -1, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(apply_uncertain(lab, "zeros"), [[1, 0, 0, 0]])
    np.testing.assert_array_equal(apply_uncertain(lab, "ones"), [[1, 0, 1, 0]])
    got = apply_uncertain(lab, "ignore")
    assert got[0, :2].tolist() == [1, 0] and np.isnan(got[0, 2]) and got[0, 3] == 0


# --------------------------------------------------------------------------- loader


@pytest.fixture
def cache(tmp_path):
    n, s = 50, 16
    arr = np.random.default_rng(1).integers(0, 256, (n, s, s), dtype=np.uint8)
    path = tmp_path / "c.npy"
    mm = open_memmap(path, mode="w+", dtype=np.uint8, shape=arr.shape)
    mm[:] = arr
    mm.flush()
    return path, arr


def _epoch(loader, epoch=0, start=0):
    return list(loader.iter_epoch(epoch, start))


def test_loader_covers_every_row_once_and_is_seeded(cache):
    path, arr = cache
    rows = np.arange(10, 50)[::-1].copy()  # part rows are cache rows 49..10
    y = np.arange(40 * 2, dtype=np.float32).reshape(40, 2)
    loader = BatchLoader(str(path), rows, y, batch_size=7, shuffle=True, seed=3)
    batches = _epoch(loader)
    pos = np.concatenate([b.positions for b in batches])
    assert sorted(pos.tolist()) == list(range(40))
    for b in batches:
        np.testing.assert_array_equal(b.images.numpy(), arr[rows[b.positions]])
        np.testing.assert_array_equal(b.targets.numpy(), y[b.positions])
    again = np.concatenate([b.positions for b in _epoch(loader)])
    other = np.concatenate([b.positions for b in _epoch(loader, epoch=1)])
    assert again.tolist() == pos.tolist() and other.tolist() != pos.tolist()
    # starting mid-epoch gives exactly the remaining batches
    tail = _epoch(loader, 0, 3)
    assert [b.index for b in tail] == [3, 4, 5]
    for a, b in zip(tail, batches[3:]):
        np.testing.assert_array_equal(a.images.numpy(), b.images.numpy())
    # synchronous loading (no worker threads) gives the same batches
    sync = BatchLoader(str(path), rows, y, batch_size=7, shuffle=True, seed=3, num_workers=0)
    assert np.concatenate([b.positions for b in _epoch(sync)]).tolist() == pos.tolist()


def test_loader_shards_per_rank(cache):
    path, _ = cache
    rows = np.arange(45)
    shards = [np.concatenate([b.positions for b in _epoch(
        BatchLoader(str(path), rows, None, batch_size=4, shuffle=True, seed=0, rank=r, world_size=2))])
        for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 23  # padded to equal length
    assert set(shards[0]) | set(shards[1]) == set(range(45))
    assert len(set(shards[0]) & set(shards[1])) == 1  # only the padding repeats


def test_cpu_augmentation_flips_and_rotates_deterministically(cache):
    path, arr = cache
    rows = np.arange(50)
    flip_only = BatchLoader(str(path), rows, None, batch_size=50, augment=True, rotation=0.0,
                            seed=5)
    out = _epoch(flip_only)[0].images.numpy()
    flipped = [np.array_equal(out[i], arr[i, :, ::-1]) for i in range(50)]
    kept = [np.array_equal(out[i], arr[i]) for i in range(50)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 40
    aug = BatchLoader(str(path), rows, None, batch_size=50, augment=True, seed=5)
    a, b = _epoch(aug)[0].images.numpy(), _epoch(aug)[0].images.numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, out)


def test_rotation_maps_rotate_about_the_centre():
    maps = _RotationMaps(21, 10.0)
    img = np.zeros(21 * 21 + 1, dtype=np.uint8)
    img[10 * 21 + 10] = 255  # centre pixel
    img[10 * 21 + 20] = 200  # right edge, middle row
    for angle_id in range(maps.n_angles):
        out = img[maps.get(angle_id, False)].reshape(21, 21)
        assert out[10, 10] == 255
    rot = img[maps.get(maps.n_angles - 1, False)].reshape(21, 21)  # +10 degrees
    ys, xs = np.nonzero(rot == 200)
    assert len(ys) >= 1 and abs(ys.mean() - 10) >= 1  # moved off the middle row
    ident = img[maps.get(maps.steps, False)]
    np.testing.assert_array_equal(ident, img[:-1])


def test_model_input_normalises_with_the_models_statistics():
    x = torch.tensor([[[0, 255], [128, 64]]], dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = model_input(x, mean, std)
    assert got.shape == (1, 3, 2, 2)
    for c in range(3):
        want = (x[0].float() / 255 - mean[c]) / std[c]
        torch.testing.assert_close(got[0, c], want)
    assert model_input(x, mean, std, size=4).shape == (1, 3, 4, 4)
