"""The demo: the whole study in miniature, checked through its registry."""

from __future__ import annotations

import json

import pytest

from sqlalchemy import func, select
from typer.testing import CliRunner

from vitmed_cli.cli import app
from vitmed_cli.demo import SOURCE, SOURCE_INIT, TARGET, DemoSettings, run_demo
from vitmed_cli.registry.db import open_registry
from vitmed_cli.registry.models import (
    Checkpoint,
    Comparison,
    ComparisonResult,
    Dataset,
    Evaluation,
    Prediction,
    Run,
    Split,
)

runner = CliRunner()


def test_smallest_demo_leaves_an_explorable_registry(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--smallest", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (out / "report.html").is_file() and summary["report_path"] == str(out / "report.html")

    reg = open_registry(f"sqlite:///{out / 'registry.db'}")
    try:
        with reg.session() as s:
            assert sorted(s.scalars(select(Dataset.name))) == sorted([SOURCE, TARGET])
            assert s.scalar(select(func.count()).select_from(Split)) == 2
            runs = s.scalars(select(Run).order_by(Run.id)).all()
            assert [(r.dataset.name, r.init_name, r.status) for r in runs] == [
                (SOURCE, "random", "completed"),
                (TARGET, "random", "completed"),
                (TARGET, SOURCE_INIT, "completed"),
            ]
            # the source run's best weights became the init of the third run, by sha256
            init = s.scalar(select(Checkpoint).where(Checkpoint.name == SOURCE_INIT))
            assert runs[2].init_checkpoint_id == init.id and runs[2].init_sha256 == init.sha256
            evals = s.scalars(select(Evaluation).order_by(Evaluation.id)).all()
            assert [e.run_id for e in evals] == [runs[1].id, runs[2].id]
            assert all(e.part == "test" and e.dataset.name == TARGET for e in evals)
            n_pred = s.scalar(select(func.count()).select_from(Prediction))
            assert n_pred == sum(e.n_images for e in evals) * 5
            cmp = s.scalar(select(Comparison))
            assert {cmp.evaluation_a_id, cmp.evaluation_b_id} == {e.id for e in evals}
            findings = set(s.scalars(select(ComparisonResult.finding)
                                     .where(ComparisonResult.comparison_id == cmp.id)))
            assert "__macro__" in findings and len(findings) >= 3
    finally:
        reg.dispose()

    listed = json.loads(runner.invoke(app, ["--db", f"sqlite:///{out / 'registry.db'}",
                                            "runs", "list", "--json"]).stdout)
    assert len(listed) == 3


def test_demo_refuses_to_reuse_a_registry(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "registry.db").write_bytes(b"")
    result = runner.invoke(app, ["demo", "--out", str(out), "--smallest"])
    assert result.exit_code == 1
    assert "already exists - the demo starts from a fresh registry" in result.stderr


@pytest.mark.slow
def test_source_pretraining_beats_random_at_default_settings(tmp_path):
    """The demo's claim, at its default settings (about a minute on 2 CPU cores)."""
    res = run_demo(tmp_path / "demo", DemoSettings())
    pair = res.comparison["pairs"][0]
    by_label = {pair["evaluation_a"]: "a", pair["evaluation_b"]: "b"}
    source_side = by_label[res.evaluation_ids[SOURCE_INIT]]
    random_side = by_label[res.evaluation_ids["random"]]
    macro = pair["macro"]
    assert macro[f"auc_{source_side}"] > macro[f"auc_{random_side}"] + 0.02, macro
    assert macro["p_value"] < 0.05, macro
