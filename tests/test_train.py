"""vitmed finetune: learning, the run record, interrupt + resume equivalence, clean failures."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from sqlalchemy import func, select
from typer.testing import CliRunner

from helpers import build_dataset
from vitmed_cli.training import loop as loop_mod
from vitmed_cli.cli import app
from vitmed_cli.errors import TrainingError
from vitmed_cli.registry.models import Checkpoint, EpochMetric, Run
from vitmed_cli.events import Notice
from vitmed_cli.training import finetune, resume
from vitmed_cli.weights import sha256_file

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
ARCH = "vit_tiny_patch16_224"
FAST = dict(arch=ARCH, model_kwargs=TINY, lr=2e-3, batch_size=32)


def _url(registry) -> str:
    return registry.engine.url.render_as_string(hide_password=False)


def test_finetune_learns_and_records_the_run(registry, tmp_path):
    build_dataset(registry, tmp_path, n=300)
    result = finetune(registry, dataset="toy", epochs=4, seed=1, **FAST)
    assert result.status == "completed"
    assert result.best_val_macro_auc >= 0.75  # chance is 0.5
    with registry.session() as s:
        run = s.get(Run, result.run_id)
        assert run.status == "completed" and run.ended_at is not None and run.error is None
        assert run.epochs_done == 4 and run.epochs_planned == 4
        assert run.best_epoch == result.best_epoch
        assert run.best_val_macro_auc == pytest.approx(result.best_val_macro_auc)
        assert run.findings == ["Effusion", "Nodule"]
        assert run.init_name == "random" and run.init_checkpoint_id is None
        cfg = run.config
        assert cfg["train"]["lr"] == 2e-3 and cfg["train"]["uncertain"] == "zeros"
        assert cfg["train"]["model_kwargs"] == TINY and cfg["model_kwargs"] == TINY
        assert cfg["adaptation"]["head"] == "new"
        assert cfg["n_train"] > 0 and set(cfg["pos_weight"]) == {"Effusion", "Nodule"}
        assert {"python", "torch", "timm", "numpy", "vitmed"} <= set(run.versions)
        assert run.code_version and run.host and run.world_size == 1
        epochs = s.scalars(select(EpochMetric).where(EpochMetric.run_id == run.id)
                           .order_by(EpochMetric.epoch)).all()
        assert [e.epoch for e in epochs] == [1, 2, 3, 4]
        assert all(set(e.val_auc) == {"Effusion", "Nodule"} for e in epochs)
        best = max(epochs, key=lambda e: e.val_macro_auc)
        assert best.epoch == run.best_epoch
        ckpts = {c.role: c for c in s.scalars(select(Checkpoint).where(Checkpoint.run_id == run.id))}
        assert set(ckpts) == {"best", "last"}
        for role, c in ckpts.items():
            assert c.source == "run" and c.findings == ["Effusion", "Nodule"]
            assert c.sha256 == sha256_file(c.path)
            assert c.meta["model_kwargs"] == TINY
        assert ckpts["best"].epoch == run.best_epoch and ckpts["last"].epoch == 4
        sd = load_file(ckpts["best"].path)
        assert sd["head.weight"].shape == (2, 32)


def test_interrupted_then_resumed_run_equals_uninterrupted(registry, tmp_path):
    build_dataset(registry, tmp_path, n=200)
    whole = finetune(registry, dataset="toy", epochs=2, seed=7, **FAST)

    def interrupt(epoch, batch):
        if epoch == 0 and batch == 1:
            signal.raise_signal(signal.SIGINT)  # the real handler: stop at the batch boundary

    cut = finetune(registry, dataset="toy", epochs=2, seed=7, on_step=interrupt, **FAST)
    assert cut.status == "interrupted" and cut.epochs_done == 0
    assert f"vitmed finetune --resume {cut.run_id}" in cut.message
    with registry.session() as s:
        run = s.get(Run, cut.run_id)
        assert run.status == "interrupted" and Path(run.resume_path).is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    done = resume(registry, cut.run_id)
    assert done.status == "completed" and done.epochs_done == 2
    for a, b in zip(whole.history, done.history, strict=True):
        assert a["epoch"] == b["epoch"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
        for f in a["val_auc"]:
            assert a["val_auc"][f] == pytest.approx(b["val_auc"][f], abs=1e-6)
    wa, wb = load_file(whole.checkpoints["last"]), load_file(done.checkpoints["last"])
    for k in wa:
        np.testing.assert_allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-6)
    with registry.session() as s:
        run = s.get(Run, cut.run_id)
        assert run.status == "completed" and len(run.config["resumes"]) == 1
        assert s.scalar(select(func.count()).where(EpochMetric.run_id == cut.run_id)) == 2
    with pytest.raises(TrainingError, match=f"run {cut.run_id} is already completed"):
        resume(registry, cut.run_id)


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_kill_between_resume_file_and_epoch_row_loses_no_epoch(registry, tmp_path, monkeypatch):
    build_dataset(registry, tmp_path, n=80)
    whole = finetune(registry, dataset="toy", epochs=2, seed=3, **FAST)
    original = loop_mod.save_resume

    def save_then_die(path, payload):
        original(path, payload)
        if payload["batch"] == 0 and payload["epoch"] == 1:  # epoch 1 saved, its row not yet
            raise _Killed

    monkeypatch.setattr(loop_mod, "save_resume", save_then_die)
    with pytest.raises(_Killed):
        finetune(registry, dataset="toy", epochs=2, seed=3, **FAST)
    monkeypatch.setattr(loop_mod, "save_resume", original)
    with registry.session() as s:
        run = s.scalars(select(Run).order_by(Run.id.desc())).first()
        run_id = run.id
        assert run.epochs_done == 0 and run.resume_path is None  # the window being tested
        assert s.scalars(select(EpochMetric).where(EpochMetric.run_id == run_id)).all() == []
    res = resume(registry, run_id)
    assert res.status == "completed" and res.epochs_done == 2
    with registry.session() as s:
        rows = s.scalars(select(EpochMetric).where(EpochMetric.run_id == run_id)
                         .order_by(EpochMetric.epoch)).all()
        assert [r.epoch for r in rows] == [1, 2]
        assert [r.val_macro_auc for r in rows] == pytest.approx(
            [h["val_macro_auc"] for h in whole.history])
        run = s.get(Run, run_id)
        assert run.epochs_done == 2 and run.best_epoch == whole.best_epoch


def test_failed_run_records_the_error(registry, tmp_path, monkeypatch):
    build_dataset(registry, tmp_path, n=80)

    def boom(self, x, y):
        raise RuntimeError("out of memory on purpose")

    monkeypatch.setattr(loop_mod.Trainer, "step", boom)
    with pytest.raises(TrainingError, match=r"run \d+ failed: RuntimeError: out of memory on purpose"):
        finetune(registry, dataset="toy", epochs=1, **FAST)
    with registry.session() as s:
        run = s.scalars(select(Run)).one()
        assert run.status == "failed" and "out of memory on purpose" in run.error
        assert run.ended_at is not None


# --------------------------------------------------------------------------- CLI


def _invoke(registry, *args):
    return CliRunner().invoke(app, ["--db", _url(registry), *args])


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


TINY_ARGS = ["--arch", ARCH, "--model-kwargs", json.dumps(TINY), "--quiet"]


def _n_runs(registry) -> int:
    with registry.session() as s:
        return s.scalar(select(func.count()).select_from(Run))


def test_cli_refuses_split_without_validation_part(registry, tmp_path):
    build_dataset(registry, tmp_path, n=60, fractions=(0.8, 0.0, 0.2))
    line = _one_line_error(_invoke(registry, "finetune", "--dataset", "toy", *TINY_ARGS))
    assert line == (
        "Error: split 'default' of dataset 'toy' has no validation part - the best epoch is chosen "
        "on it; make a split with a validation part (see vitmed split --help) and pass it with --split"
    )
    assert _n_runs(registry) == 0


def test_cli_names_the_finding_without_positives(registry, tmp_path):
    build_dataset(registry, tmp_path, n=60, no_positive="Nodule")
    line = _one_line_error(_invoke(registry, "finetune", "--dataset", "toy", *TINY_ARGS))
    assert line == (
        "Error: finding(s) Nodule have no positive images in the train part of split 'default' of "
        "dataset 'toy' - a model cannot learn them; leave them out with --min-positives 1, choose "
        "findings with --findings, or use a split (or dataset) with positives for every finding"
    )
    line = _one_line_error(_invoke(registry, "finetune", "--dataset", "toy", "--findings",
                                   "Effusion,Mass", *TINY_ARGS))
    assert line == "Error: unknown finding(s) Mass for dataset 'toy' - choose from: Effusion, Nodule"
    assert _n_runs(registry) == 0


def test_cli_min_positives_leaves_out_and_records_findings(registry, tmp_path):
    build_dataset(registry, tmp_path, n=60, no_positive="Nodule")
    result = _invoke(registry, "finetune", "--dataset", "toy", "--epochs", "1", "--device", "cpu",
                     "--min-positives", "1", *TINY_ARGS, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (
        "warning: left out 1 finding(s) with fewer than 1 training positives: Nodule (0)")
    out = json.loads(result.stdout)
    assert out["left_out_findings"] == {"few_positives": {"Nodule": 0}, "min_positives": 1}
    with registry.session() as s:
        run = s.get(Run, out["run_id"])
        assert run.findings == ["Effusion"]
        assert run.config["left_out_findings"]["few_positives"] == {"Nodule": 0}
        assert run.config["train"]["min_positives"] == 1
    from vitmed_cli.evaluations import predict

    scored = predict(registry, run_id=out["run_id"], device="cpu")
    assert list(scored.auc) == ["Effusion"]  # the run's findings, not the dataset's


def test_non_findings_are_skipped_by_default_and_findings_picks(registry, tmp_path):
    from vitmed_cli.registry.models import Dataset

    build_dataset(registry, tmp_path, n=120)  # enough validation images for each finding's AUC
    with registry.session() as s:
        ds = s.scalars(select(Dataset)).one()
        ds.options = {"non_findings": ["Effusion"]}
    events: list = []
    res = finetune(registry, dataset="toy", epochs=1, on_event=events.append, **FAST)
    warnings = [e.text for e in events if isinstance(e, Notice) and e.level == "warning"]
    assert warnings == ["left out non-findings: Effusion"]
    assert res.left_out_findings == {"non_findings": ["Effusion"]}
    res2 = finetune(registry, dataset="toy", epochs=1, findings=["Effusion"], **FAST)
    with registry.session() as s:
        assert s.get(Run, res.run_id).findings == ["Nodule"]
        assert s.get(Run, res.run_id).config["left_out_findings"] == {"non_findings": ["Effusion"]}
        assert s.get(Run, res2.run_id).findings == ["Effusion"]


def test_cli_refuses_unregistered_init_and_unknown_dataset(registry, tmp_path):
    build_dataset(registry, tmp_path, n=60)
    line = _one_line_error(_invoke(registry, "finetune", "--dataset", "toy", "--init", "dinov2",
                                   "--quiet"))
    assert line.startswith("Error: no DINOv2 weights registered - download ")
    assert "vitmed pretrain-load dinov2 --file" in line
    line = _one_line_error(_invoke(registry, "finetune", "--dataset", "nope", "--quiet"))
    assert line == "Error: unknown dataset 'nope' (known: toy)"
    line = _one_line_error(_invoke(registry, "finetune", "--dataset", "toy", "--split", "x", "--quiet"))
    assert line == "Error: dataset 'toy' has no split 'x' (known: default)"
    line = _one_line_error(_invoke(registry, "finetune", "--dataset", "toy", "--model-kwargs", "[1]"))
    assert line == "Error: --model-kwargs must be a JSON object, e.g. '{\"depth\": 2, \"embed_dim\": 64}'"
    line = _one_line_error(_invoke(registry, "finetune", "--resume", "99"))
    assert line == "Error: no run with id 99 - see vitmed runs list"
    assert _n_runs(registry) == 0


def test_cli_finetune_json(registry, tmp_path):
    build_dataset(registry, tmp_path, n=80)
    result = _invoke(registry, "finetune", "--dataset", "toy", "--epochs", "1", "--lr", "1e-3",
                     "--device", "cpu", *TINY_ARGS, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"run_id", "status", "best_epoch", "best_val_macro_auc"} <= set(out)
    assert out["status"] == "completed" and out["best_epoch"] == 1
    with registry.session() as s:
        assert s.get(Run, out["run_id"]).status == "completed"


def test_cli_sigterm_stops_with_exit_130_and_the_resume_command(registry, tmp_path, monkeypatch):
    build_dataset(registry, tmp_path, n=120)
    original = loop_mod.Trainer.step
    calls = []

    def step_then_term(self, x, y):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGTERM)  # as sent by a scheduler or `kill`
        return original(self, x, y)

    monkeypatch.setattr(loop_mod.Trainer, "step", step_then_term)
    result = _invoke(registry, "finetune", "--dataset", "toy", "--epochs", "2", *TINY_ARGS)
    assert result.exit_code == 130
    with registry.session() as s:
        run = s.scalars(select(Run)).one()
        assert run.status == "interrupted" and run.epochs_done == 0
    assert "nothing here yet" not in result.stdout  # no empty epoch table after a stop in epoch 1
    assert result.stderr.strip().splitlines() == [
        "stopping at the next safe point and saving a resumable checkpoint (Ctrl-C again to abort at once)",
        f"run {run.id} interrupted - continue it with: vitmed finetune --resume {run.id}",
    ]
    assert len(calls) == 1  # stopped at the first batch boundary


def test_changed_init_file_is_refused_before_any_run_row(registry, tmp_path):
    import timm
    import torch

    from vitmed_cli.weights import pretrain_load

    build_dataset(registry, tmp_path, n=60)
    path = tmp_path / "mine.pth"
    torch.save(timm.create_model(ARCH, pretrained=False, img_size=32, **TINY).state_dict(), path)
    pretrain_load(registry, "file", file=path, arch=ARCH, name="mine", model_kwargs=TINY)
    torch.save(timm.create_model(ARCH, pretrained=False, img_size=32, **TINY).state_dict(), path)
    line = _one_line_error(_invoke(registry, "finetune", "--dataset", "toy", "--init", "mine",
                                   *TINY_ARGS))
    assert "changed since it was registered" in line
    assert _n_runs(registry) == 0


def test_finetune_refuses_a_validation_part_where_no_finding_has_positives_and_negatives(registry, tmp_path):
    from vitmed_cli.registry.models import Label, SplitAssignment

    build_dataset(registry, tmp_path, n=60)
    with registry.session() as s:  # every validation label negative: no validation AUC is defined
        val_ids = select(SplitAssignment.image_id).where(SplitAssignment.part == "val")
        s.execute(Label.__table__.update().where(Label.image_id.in_(val_ids)).values(value=0))
    with pytest.raises(TrainingError) as err:
        finetune(registry, dataset="toy", epochs=1, device="cpu", **FAST)
    assert str(err.value) == (
        "no finding has both positive and negative images in the validation part of split 'default' of "
        "dataset 'toy' - the validation macro AUC that chooses the best epoch is not defined; make a split "
        "with a larger `val` (see vitmed split --help)")
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0
