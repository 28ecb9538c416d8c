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


def test_an_empty_validation_part_is_reported_where_the_split_is_made(registry, sqlite_url):
    from typer.testing import CliRunner

    from vitmed_cli.cli import app

    # two patients outside the official test part: 0.1 of them is none, so val comes out empty
    add_dataset(registry, "nih", n_patients=4, official=lambda p: "test" if p >= 2 else "train")
    res = CliRunner().invoke(app, ["--db", sqlite_url, "split", "nih", "--official", "--val", "0.1"])
    assert res.exit_code == 0, res.output
    assert ("warning: the val part is empty (too few patients for a 0.1 fraction) - finetune chooses the "
            "best epoch on it; make the split again with a larger --val or from more patients") in \
        " ".join(res.stderr.split())
    from vitmed_cli.splits import make_split

    info = make_split(registry, "nih", val=0.1, test=0.2, name="tiny")
    assert any(w.startswith("the val part is empty (too few patients for a 0.1 fraction)")
               for w in info["warnings"])
