"""Official splits of datasets that publish no test part (CheXpert's public release)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from vitmed_cli.errors import InputError
from vitmed_cli.registry.models import Split
from vitmed_cli.splits import official_split
from helpers import add_dataset


def test_official_split_without_a_test_part_is_refused(registry):
    add_dataset(registry, official=lambda p: "val" if p < 10 else "train")
    with pytest.raises(InputError, match=r"has no official test part .* vitmed split toy --test 0.2"):
        official_split(registry, "toy")
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Split)) == 0


def test_split_summary_counts_the_images_training_uses(registry, tmp_path):
    from helpers import build_dataset

    from vitmed_cli.datasets.parts import load_part
    from vitmed_cli.splits import make_split

    build_dataset(registry, tmp_path, n=90, n_lateral=8, n_unreadable=5)
    info = make_split(registry, "toy", seed=1, name="s1")
    with registry.session() as s:
        for part in ("train", "val", "test"):
            assert info["parts"][part]["n_used"] == len(load_part(s, "toy", "s1", part))
    assert sum(p["n_used"] for p in info["parts"].values()) < info["n_images"]
