"""finetune --rotation, --flip/--no-flip and --normalise: what the model is fed in training and
in predict, how runs record them, older runs, and help that names the study's values."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import build_dataset
from vitmed_cli.cli import app
from vitmed_cli.datasets.loader import BatchLoader
from vitmed_cli.evaluations import predict
from vitmed_cli.evaluations.from_run import load_run_model
from vitmed_cli.evaluations.store import load_evaluation_arrays
from vitmed_cli.inference import model_input, model_norm
from vitmed_cli.registry.models import Evaluation, Run
from vitmed_cli.training import finetune, resume
from vitmed_cli.training import loop as loop_mod
from vitmed_cli.training.config import TrainConfig

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
ARCH = "vit_tiny_patch16_224"
FAST = dict(arch=ARCH, model_kwargs=TINY, lr=2e-3, batch_size=32, device="cpu")
TINY_ARGS = ["--arch", ARCH, "--model-kwargs", json.dumps(TINY), "--quiet", "--device", "cpu"]
NEW_FIELDS = ("rotation", "flip", "normalise", "merge", "no_finding")


def _url(registry) -> str:
    return registry.engine.url.render_as_string(hide_password=False)


def _invoke(registry, *args):
    return CliRunner().invoke(app, ["--db", _url(registry), *args])


def _loaders(monkeypatch) -> list[BatchLoader]:
    """The loaders the training loop builds (real ones, kept to look at afterwards)."""
    made: list[BatchLoader] = []

    def keep(*args, **kwargs):
        made.append(BatchLoader(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(loop_mod, "BatchLoader", keep)
    return made


def _unchanged(loader: BatchLoader, cache: np.ndarray) -> list[bool]:
    """Per training image of epoch 0: is the batch image the cached image itself?"""
    return [np.array_equal(img, cache[loader.cache_rows[p]])
            for b in loader.iter_epoch(0) for img, p in zip(b.images.numpy(), b.positions)]


def test_no_flip_and_no_rotation_make_training_augmentation_the_identity(registry, tmp_path, monkeypatch):
    info = build_dataset(registry, tmp_path, n=120)
    cache = np.load(info["cache_path"])
    made = _loaders(monkeypatch)
    finetune(registry, dataset="toy", epochs=1, flip=False, rotation=0.0, **FAST)
    train = next(ld for ld in made if ld.augment)
    assert (train.flip, train.rotation) == (False, 0.0)
    assert all(_unchanged(train, cache))
    made.clear()
    finetune(registry, dataset="toy", epochs=1, rotation=0.0, **FAST)  # flips only: about half
    flipped = next(ld for ld in made if ld.augment)
    assert 0.2 < 1 - np.mean(_unchanged(flipped, cache)) < 0.8
    # a rotation without flips: no image is its own mirror image
    rotated = BatchLoader(info["cache_path"], train.cache_rows, None, batch_size=16, augment=True,
                          flip=False, rotation=10.0, seed=1)
    for b in rotated.iter_epoch(0):
        for img, p in zip(b.images.numpy(), b.positions):
            assert not np.array_equal(img, cache[train.cache_rows[p]][:, ::-1])


def test_normalise_none_feeds_0_1_and_predict_reproduces_it(registry, tmp_path, monkeypatch):
    info = build_dataset(registry, tmp_path, n=160)
    fed: list[torch.Tensor] = []

    def record(*args, **kwargs):
        fed.append(model_input(*args, **kwargs))
        return fed[-1]

    monkeypatch.setattr(loop_mod, "model_input", record)
    res = finetune(registry, dataset="toy", epochs=2, normalise="none", **FAST)
    assert fed and all(float(x.min()) >= 0.0 and float(x.max()) <= 1.0 for x in fed)
    assert max(float(x.max()) for x in fed) > 0.8  # the blobs (230/255), not a squeezed range
    for x in fed:  # each value is a cached uint8 over 255 (bilinear only where rotated)
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])

    ev = predict(registry, run_id=res.run_id, device="cpu")
    with registry.session() as s:
        run = s.get(Run, res.run_id)
        assert run.config["train"]["normalise"] == "none"
        assert run.config["mean"] == [0.0, 0.0, 0.0] and run.config["std"] == [1.0, 1.0, 1.0]
        assert s.get(Evaluation, ev.evaluation_id).config["normalise"] == "none"
        arrays = load_evaluation_arrays(s, ev.evaluation_id)
        model, _ = load_run_model(s, run)
    test = (info["parts"] == "test") & info["usable"]
    np.testing.assert_array_equal(arrays.image_ids, info["image_ids"][test])
    images = torch.from_numpy(np.load(info["cache_path"])[np.flatnonzero(test)]).float()
    model.eval()
    with torch.no_grad():
        raw = torch.sigmoid(model((images / 255.0).unsqueeze(1).expand(-1, 3, -1, -1))).double().numpy()
        mean, std = model_norm(model)  # what the init's normalisation would have fed it
        normed = torch.sigmoid(model(model_input(images, mean, std))).double().numpy()
    np.testing.assert_allclose(arrays.scores, raw, atol=1e-5)
    assert np.abs(arrays.scores - normed).max() > 1e-3


def test_the_feature_cache_key_includes_normalise(registry, tmp_path):
    build_dataset(registry, tmp_path, n=120)
    probe = dict(dataset="toy", tune="head", epochs=1, seed=2, **FAST)
    runs = [finetune(registry, normalise=n, **probe).run_id for n in ("init", "none", "none")]
    with registry.session() as s:
        caches = [s.get(Run, r).config["feature_cache"] for r in runs]
    assert caches[0]["key"] != caches[1]["key"] == caches[2]["key"]
    assert caches[1]["reused"] == 0 and caches[1]["computed"] > 0  # never the init-normalised features
    assert caches[2]["computed"] == 0
    key_parts = json.loads((Path(caches[1]["path"]) / "key.json").read_text())
    assert key_parts["normalise"] == "none"


def test_runs_from_before_rotation_and_normalise_resume_and_predict(registry, tmp_path):
    assert TrainConfig.from_dict({"dataset": "d", "max_rotation": 5.0}).rotation == 5.0
    old = TrainConfig.from_dict({"dataset": "d", "max_rotation": 5.0})
    assert (old.flip, old.normalise, old.merge, old.no_finding) == (True, "init", {}, None)
    build_dataset(registry, tmp_path, n=160)

    def interrupt(epoch, batch):
        if epoch == 0 and batch == 1:
            signal.raise_signal(signal.SIGINT)

    cut = finetune(registry, dataset="toy", epochs=2, seed=5, rotation=0.0, on_step=interrupt, **FAST)
    assert cut.status == "interrupted"
    with registry.session() as s:  # the run as an older vitmed stored it
        run = s.get(Run, cut.run_id)
        train = {k: v for k, v in run.config["train"].items() if k not in NEW_FIELDS}
        run.config = {**run.config, "train": {**train, "max_rotation": 0.0}}
    done = resume(registry, cut.run_id)
    assert done.status == "completed" and done.epochs_done == 2
    ev = predict(registry, run_id=cut.run_id, device="cpu")
    with registry.session() as s:
        assert s.get(Evaluation, ev.evaluation_id).config["normalise"] == "init"
    # the same run uninterrupted: the resumed half rotated by max_rotation (0), not the default 10
    whole = finetune(registry, dataset="toy", epochs=2, seed=5, rotation=0.0, **FAST)
    assert done.history[-1]["val_macro_auc"] == pytest.approx(whole.history[-1]["val_macro_auc"], abs=1e-6)


def test_cli_records_the_options_and_runs_show_has_them(registry, tmp_path):
    build_dataset(registry, tmp_path, n=80, findings=("Effusion", "Nodule", "Mass"))
    result = _invoke(registry, "finetune", "--dataset", "toy", "--epochs", "1", "--max-rotation", "3",
                     "--no-flip", "--normalise", "none", "--merge", "nodule_mass=Nodule,Mass",
                     "--no-finding", "Normal", *TINY_ARGS, "--json")
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)["run_id"]
    shown = _invoke(registry, "runs", "show", str(run_id), "--json")
    assert shown.exit_code == 0, shown.output
    train = json.loads(shown.stdout)["config"]["train"]
    assert {k: train[k] for k in NEW_FIELDS} == {
        "rotation": 3.0, "flip": False, "normalise": "none",
        "merge": {"nodule_mass": ["Nodule", "Mass"]}, "no_finding": "Normal"}
    assert "max_rotation" not in train
    assert json.loads(shown.stdout)["findings"] == ["Effusion", "Nodule", "Mass", "nodule_mass", "Normal"]
    bad = _invoke(registry, "finetune", "--dataset", "toy", "--rotation", "-1", *TINY_ARGS)
    assert bad.exit_code == 1 and bad.stderr.strip() == "Error: --rotation must be 0 to 180 degrees, got -1.0"
    both = _invoke(registry, "finetune", "--dataset", "toy", "--rotation", "5", "--max-rotation", "6", *TINY_ARGS)
    assert both.exit_code == 1
    assert both.stderr.strip() == "Error: --rotation and --max-rotation (its old name) differ - give --rotation only"


def _help(*args) -> str:
    out = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"}).stdout
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", out))


def test_help_says_where_the_defaults_are_not_the_studys():
    text = _help("finetune")
    assert "AdamW weight decay. Default 0.01; the study used 0." in text
    assert "Default 10; the study used 7." in text  # --rotation
    assert "Default init; the study fed [0, 1] (none)." in text  # --normalise
    assert "the study learned a fixed list per dataset" in text  # --findings
    assert "The study trained 100 epochs." in text and "the study used 30." in text
    assert "--max-rotation" not in text  # the old name still works, unadvertised


def test_readme_table_of_defaults_matches_the_code():
    from vitmed_cli import choices

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"| `--weight-decay` | {choices.DEFAULT_WEIGHT_DECAY:g} | {choices.STUDY_WEIGHT_DECAY:g} |" in readme
    assert f"| {choices.DEFAULT_ROTATION:g} | {choices.STUDY_ROTATION:g} |" in readme
    assert f"| `--epochs` | {choices.DEFAULT_EPOCHS} | {choices.STUDY_EPOCHS} " in readme
    assert f"| `--batch-size` | {choices.DEFAULT_BATCH_SIZE} | {choices.STUDY_BATCH_SIZE} |" in readme
    for claim in ("the study's recipe", "as in the study's recipe"):
        assert claim not in readme.lower()
