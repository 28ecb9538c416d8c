"""vitmed predict: stored predictions, metrics recomputed from the stored rows, cross-dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sqlalchemy import select
from typer.testing import CliRunner

from helpers import build_dataset
from vitmed_cli.cli import app
from vitmed_cli.errors import NotFound
from vitmed_cli.evaluations import predict
from vitmed_cli.registry.db import Registry, create_registry_engine, upgrade
from vitmed_cli.registry.models import (
    Evaluation,
    EvaluationMetric,
    Finding,
    Image,
    Prediction,
    Run,
    SplitAssignment,
)
from vitmed_cli.training import finetune

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One registry with a trained run on 'toy' and a second dataset sharing one finding."""
    home = tmp_path_factory.mktemp("predict_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VITMED_HOME", str(home))
        url = f"sqlite:///{home / 'registry.db'}"
        engine = create_registry_engine(url)
        upgrade(engine)
        reg = Registry(engine)
        build_dataset(reg, home / "toy", n=240, seed=0)
        build_dataset(reg, home / "other", name="other", n=120, seed=5,
                      findings=("Nodule", "Pneumothorax"))
        result = finetune(reg, dataset="toy", arch="vit_tiny_patch16_224", model_kwargs=TINY,
                          lr=2e-3, epochs=3, seed=0)
        yield reg, url, result.run_id
        reg.dispose()


def _stored(reg, evaluation_id):
    with reg.session() as s:
        rows = s.execute(
            select(Finding.canonical, Prediction.image_id, Prediction.probability, Prediction.label)
            .join(Finding, Finding.id == Prediction.finding_id)
            .where(Prediction.evaluation_id == evaluation_id)
        ).all()
        metrics = {m.finding: m for m in s.scalars(
            select(EvaluationMetric).where(EvaluationMetric.evaluation_id == evaluation_id))}
    return rows, metrics


def test_predictions_are_stored_and_auc_recomputes_from_them(trained):
    reg, _, run_id = trained
    res = predict(reg, run_id=run_id, part="test")
    assert res.macro_auc > 0.7 and res.skipped_findings == []
    rows, metrics = _stored(reg, res.evaluation_id)
    assert len(rows) == res.n_images * 2
    for f in ("Effusion", "Nodule"):
        sel = [(p, lab) for c, _, p, lab in rows if c == f and lab is not None]
        y = np.array([lab for _, lab in sel])
        p = np.array([pr for pr, _ in sel])
        auc = roc_auc_score(y, p)
        assert auc == pytest.approx(res.auc[f], abs=1e-12)
        assert metrics[f].auc == pytest.approx(auc, abs=1e-12)
        m = metrics[f]
        assert m.n_positive == int((y == 1).sum()) and m.n_negative == int((y == 0).sum())
        pred = p >= m.threshold
        assert m.sensitivity == pytest.approx(pred[y == 1].mean())
        assert m.specificity == pytest.approx((~pred[y == 0]).mean())
        assert m.accuracy == pytest.approx((pred == (y == 1)).mean())
    assert res.macro_auc == pytest.approx(np.mean(list(res.auc.values())))
    with reg.session() as s:
        ev = s.get(Evaluation, res.evaluation_id)
        run = s.get(Run, run_id)
        assert ev.source == "predict" and ev.part == "test" and ev.init_name == run.init_name
        assert ev.config["threshold_part"] == "val" and ev.macro_auc == pytest.approx(res.macro_auc)
        # every stored image is a readable frontal test image of the run's split
        ids = {r[1] for r in rows}
        parts = dict(s.execute(select(SplitAssignment.image_id, SplitAssignment.part)
                               .where(SplitAssignment.split_id == run.split_id)).all())
        views = dict(s.execute(select(Image.id, Image.view).where(Image.id.in_(ids))).all())
    assert {parts[i] for i in ids} == {"test"} and "lateral" not in set(views.values())


def test_threshold_is_chosen_on_the_validation_part(trained):
    from vitmed_cli.stats import youden_threshold

    reg, _, run_id = trained
    said = []
    val = predict(reg, run_id=run_id, part="val", on_event=said.append)
    assert [e.text for e in said if getattr(e, "level", "") == "warning"] == [
        "the val part chose the thresholds it is scored with (sensitivity, specificity, accuracy are "
        "optimistic) and the run's best epoch (so is its AUC) - score the test part for unbiased numbers"]
    with reg.session() as s:
        assert s.get(Evaluation, val.evaluation_id).config["threshold_on_scored_part"] is True
    test = predict(reg, run_id=run_id, part="test")
    rows, _ = _stored(reg, val.evaluation_id)
    for f in ("Effusion", "Nodule"):
        sel = [(p, lab) for c, _, p, lab in rows if c == f and lab is not None]
        thr = youden_threshold(np.array([lab for _, lab in sel]), np.array([p for p, _ in sel]))
        got = next(m for m in test.metrics if m["finding"] == f)["threshold"]
        assert got == pytest.approx(thr)


def test_cross_dataset_scores_shared_findings_and_names_skipped(trained):
    reg, _, run_id = trained
    res = predict(reg, run_id=run_id, dataset="other", part="test")
    assert list(res.auc) == ["Nodule"]
    assert res.skipped_findings == ["Effusion", "Pneumothorax"]
    rows, _ = _stored(reg, res.evaluation_id)
    assert {r[0] for r in rows} == {"Nodule"} and len(rows) == res.n_images
    with reg.session() as s:
        assert s.get(Evaluation, res.evaluation_id).skipped_findings == ["Effusion", "Pneumothorax"]
    # the report's provenance names the run and the dataset it trained on, not "imported scores"
    from vitmed_cli.report import build_report, render_html

    page = render_html(build_report(reg, datasets=["other"], n_resamples=20))
    assert f"run {run_id} (trained on dataset toy)" in page and "no run (imported scores)" not in page


def test_cli_predict_json_and_evals_list(trained):
    _, url, run_id = trained
    runner = CliRunner()
    out = runner.invoke(app, ["--db", url, "predict", "--run", str(run_id), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert {"evaluation_id", "macro_auc", "auc", "skipped_findings", "n_images"} <= set(doc)
    listed = runner.invoke(app, ["--db", url, "evals", "list", "--json"])
    ids = [e["id"] for e in json.loads(listed.stdout)]
    assert doc["evaluation_id"] in ids


def test_cli_predict_errors_are_one_line(trained):
    _, url, run_id = trained
    runner = CliRunner()
    res = runner.invoke(app, ["--db", url, "predict", "--run", "999"])
    assert res.exit_code == 1 and res.stderr.strip() == "Error: no run with id 999 - see vitmed runs list"
    res = runner.invoke(app, ["--db", url, "predict", "--run", str(run_id), "--dataset", "nope"])
    assert res.exit_code == 1
    assert res.stderr.strip() == "Error: unknown dataset 'nope' (known: other, toy)"


def test_run_without_checkpoint_is_refused(registry, tmp_path):
    build_dataset(registry, tmp_path, n=40)
    with registry.session() as s:
        from vitmed_cli.registry import queries

        ds = queries.get_dataset(s, "toy")
        run = Run(dataset_id=ds.id, split_id=ds.splits[0].id, init_name="random", arch="x",
                  image_size=32, findings=["Effusion"], seed=0, status="interrupted",
                  epochs_planned=1)
        s.add(run)
        s.flush()
        run_id = run.id
    with pytest.raises(NotFound) as err:
        predict(registry, run_id=run_id)
    assert str(err.value) == (
        f"run {run_id} has no 'best' checkpoint (status interrupted) - continue it with "
        f"vitmed finetune --resume {run_id}"
    )
    with registry.session() as s:
        assert s.scalars(select(Evaluation)).all() == []


def _add_split(reg, name, part_of):
    """A split of 'toy' whose part for each image is ``part_of(part in 'default')``."""
    from vitmed_cli.registry.models import Split

    with reg.session() as s:
        from vitmed_cli.registry import queries

        ds = queries.get_dataset(s, "toy")
        default = queries.get_split(s, ds, "default")
        rows = s.execute(select(SplitAssignment.image_id, SplitAssignment.part)
                         .where(SplitAssignment.split_id == default.id)).all()
        sp = Split(dataset_id=ds.id, name=name, method="random", seed=1)
        s.add(sp)
        s.flush()
        s.add_all([SplitAssignment(split_id=sp.id, image_id=i, part=part_of(p)) for i, p in rows])
        return sum(1 for _, p in rows if part_of(p) == "test" and p in ("train", "val"))


def test_other_split_of_the_run_dataset_must_not_hold_its_training_images(trained):
    reg, url, run_id = trained
    n_leak = _add_split(reg, "leaky", lambda p: {"train": "test", "test": "train"}.get(p, p))
    assert n_leak > 0
    res = CliRunner().invoke(app, ["--db", url, "predict", "--run", str(run_id), "--split", "leaky"])
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (
        f"Error: {n_leak} of the images in leaky/test were in run {run_id}'s training or "
        "validation data (split default) - evaluate on the run's own split or a disjoint one"
    )
    # a split whose test part is the run's own test part is fine
    assert _add_split(reg, "same-test", lambda p: "test" if p == "test" else "train") == 0
    ok = predict(reg, run_id=run_id, split="same-test")
    own = predict(reg, run_id=run_id)
    assert ok.n_images == own.n_images and ok.split == "same-test"
    with reg.session() as s:  # nothing stored for the refused split
        assert {e.split.name for e in s.scalars(select(Evaluation))} >= {"same-test"}
        assert "leaky" not in {e.split.name for e in s.scalars(select(Evaluation))}
