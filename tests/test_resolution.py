"""One dataset at several resolutions: ingest once per size (resumable), train and predict from the
cache built at the run's size, report grouped by resolution."""

from __future__ import annotations

import numpy as np

from vitmed_cli.catalog import dataset_summary
from vitmed_cli.datasets.cache import load_image
from vitmed_cli.datasets.ingest import ingest_dataset
from vitmed_cli.evaluations import predict
from vitmed_cli.registry.models import Dataset, Image, Run
from vitmed_cli.report import build_report
from vitmed_cli.splits import make_split
from vitmed_cli.training import finetune

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


def test_a_second_size_is_a_second_cache_of_the_same_images(registry, tmp_path):
    src = tmp_path / "syn"
    first = ingest_dataset(registry, "synthetic", src, name="syn", image_size=32, workers=1, n_images=80)
    second = ingest_dataset(registry, "synthetic", src, name="syn", image_size=64, workers=1, n_images=80)
    assert second.image_size == 64 and second.cache_path.endswith("-64px.npy")
    assert second.n_ingested == first.n_ingested and second.n_new_images == 0
    with registry.session() as s:
        ds = s.query(Dataset).filter_by(name="syn").one()
        assert ds.image_size == 32  # the dataset keeps its own cache and rows
        images = s.query(Image).filter(Image.cache_index.is_not(None)).order_by(Image.id).all()
        rows = [(im.cache_index, im.source_path) for im in images]
    big = np.load(second.cache_path, mmap_mode="r")
    for row, path in rows[:5]:  # row for row, decoded at 64 px from the source
        np.testing.assert_array_equal(big[row], load_image(path, 64))
    assert set(dataset_summary(registry, "syn")["caches"]) == {32, 64}

    # resumable: rows not marked done are decoded again, the others kept
    mask_path = second.cache_path.replace(".npy", ".done.npy")
    done = np.load(mask_path)
    done[rows[0][0]] = False
    np.save(mask_path, done)
    again = ingest_dataset(registry, "synthetic", src, name="syn", image_size=64, workers=1, n_images=80)
    assert again.n_ingested == 1 and again.n_skipped_existing == len(rows) - 1

    make_split(registry, "syn", seed=0)
    runs = {size: finetune(registry, dataset="syn", arch="vit_tiny_patch16_224", model_kwargs=TINY,
                           image_size=size, epochs=1, lr=2e-3, seed=0) for size in (32, 64)}
    with registry.session() as s:
        caches = {size: s.get(Run, r.run_id).config["image_cache"] for size, r in runs.items()}
    assert caches[64] == second.cache_path and caches[32] == first.cache_path
    for r in runs.values():
        predict(registry, run_id=r.run_id)
    rows = build_report(registry, n_resamples=20, figures=False).datasets[0].inits
    assert [(r.init_name, r.image_size) for r in rows] == [("random @32px", 32), ("random @64px", 64)]
