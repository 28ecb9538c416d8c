"""finetune --tune: linear probes on stored features, partial fine-tuning, and what compare makes of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from helpers import DINOV3_VIT, DINOV3_VIT_KW, build_dataset, write_dinov3_vit
from vitmed_cli import weights
from vitmed_cli.cli import app
from vitmed_cli.compare import compare
from vitmed_cli.errors import ConfigError, RefusedError
from vitmed_cli.evaluations import predict
from vitmed_cli.registry.models import Run
from vitmed_cli.training import finetune

runner = CliRunner()
TINY = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
PROBE = dict(epochs=3, lr=1e-2, batch_size=16)


def _url(registry) -> str:
    return registry.engine.url.render_as_string(hide_password=False)


@pytest.fixture
def dinov3(registry, tmp_path):
    """A toy dataset and a registered DINOv3 ViT (release layout) to probe."""
    build_dataset(registry, tmp_path / "data", n=240, size=32)
    path, _ = write_dinov3_vit(tmp_path)
    weights.pretrain_load(registry, "dinov3", file=path, arch=DINOV3_VIT, model_kwargs=DINOV3_VIT_KW)
    return "dinov3"


def _config(registry, run_id: int) -> dict:
    with registry.session() as s:
        return dict(s.get(Run, run_id).config)


@pytest.mark.parametrize("init, arch, kwargs", [
    ("dinov3", None, {}),
    ("random", "test_resnet", {}),  # batch norms: a frozen backbone keeps its statistics
])
def test_head_on_stored_features_equals_the_end_to_end_frozen_head(registry, dinov3, init, arch, kwargs):
    common = dict(dataset="toy", init=init, arch=arch, model_kwargs=kwargs, tune="head", seed=3, **PROBE)
    stored = finetune(registry, **common)
    e2e = finetune(registry, feature_cache=False, **common)
    assert "feature_cache" in _config(registry, stored.run_id)
    assert "feature_cache" not in _config(registry, e2e.run_id)
    for a, b in zip(stored.history, e2e.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_macro_auc"] == pytest.approx(b["val_macro_auc"], abs=1e-6)
    wa, wb = load_file(stored.checkpoints["last"]), load_file(e2e.checkpoints["last"])
    assert wa.keys() == wb.keys()
    for k in wa:  # the heads agree, and both backbones are the untouched init (BN statistics too)
        np.testing.assert_allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-5, err_msg=k)
    with registry.session() as s:
        spec = weights.resolve_init(s, init, arch)
    init_model, _ = weights.create_model_from_init(spec, 2, 32, arch=arch, **kwargs) if spec.path else (None, None)
    if init_model is not None:
        frozen = {k: v for k, v in init_model.state_dict().items() if not k.startswith("head")}
        assert all(torch.equal(wa[k], v) for k, v in frozen.items())
    head = "fc.weight" if arch == "test_resnet" else "head.weight"
    assert not torch.equal(wa[head], torch.zeros_like(wa[head]))
    assert _config(registry, stored.run_id)["tuning"]["tune"] == "head"


def test_a_second_probe_reuses_the_stored_features(registry, dinov3, tmp_path):
    # 64 px from the 32 px cache: 4x4 patches of 16
    first = finetune(registry, dataset="toy", init=dinov3, tune="head", seed=0, image_size=64, **PROBE)
    rec1 = _config(registry, first.run_id)["feature_cache"]
    n_images = _config(registry, first.run_id)["n_train"] + _config(registry, first.run_id)["n_val"]
    assert rec1["computed"] == n_images and rec1["reused"] == 0
    assert Path(rec1["path"]).parent.parent == registry.workspace.cache_dir  # beside the image cache
    assert first.best_val_macro_auc > 0.7  # a linear probe of a random tiny backbone still finds the blobs

    out = runner.invoke(app, ["--db", _url(registry), "finetune", "--dataset", "toy", "--init", dinov3,
                              "--tune", "head", "--seed", "1", "--epochs", "2", "--lr", "0.01", "--image-size", "64",
                              "--json"])
    assert out.exit_code == 0, out.output
    second = json.loads(out.stdout)["run_id"]
    rec2 = _config(registry, second)["feature_cache"]
    assert rec2["key"] == rec1["key"] and rec2["path"] == rec1["path"]
    assert rec2["computed"] == 0 and rec2["reused"] == n_images

    shown = runner.invoke(app, ["--db", _url(registry), "runs", "show", str(second), "--json"])
    info = json.loads(shown.stdout)
    assert info["tune"] == "head" and info["config"]["feature_cache"]["reused"] == n_images

    # another resolution is another preprocessing: computed afresh, under another key
    third = finetune(registry, dataset="toy", init=dinov3, tune="head", image_size=32, **PROBE)
    rec3 = _config(registry, third.run_id)["feature_cache"]
    assert rec3["key"] != rec1["key"] and rec3["computed"] == n_images


def test_last_n_trains_only_the_last_blocks(registry, tmp_path):
    build_dataset(registry, tmp_path, n=120, size=32)
    run = finetune(registry, dataset="toy", arch="vit_tiny_patch16_224", model_kwargs=TINY, tune="last:1",
                   seed=0, **PROBE)
    torch.manual_seed(0)  # the loop seeds before building the model: the same random start
    from vitmed_cli.models import create_model

    start, _ = create_model("vit_tiny_patch16_224", 2, 32, **TINY)
    trained = load_file(run.checkpoints["last"])
    for k, v in start.state_dict().items():
        moved = not torch.equal(trained[k], v)
        assert moved == k.startswith(("blocks.1.", "norm.", "head.")), k
    tuning = _config(registry, run.run_id)["tuning"]
    assert tuning["tune"] == "last:1" and 0 < tuning["trainable_params"] < tuning["frozen_params"] * 2
    with pytest.raises(Exception, match=r"`tune` last:5 asks for more blocks than the model has \(2\)"):
        finetune(registry, dataset="toy", arch="vit_tiny_patch16_224", model_kwargs=TINY, tune="last:5",
                 epochs=1)
    with pytest.raises(ConfigError, match="`tune` must be all, head or last:N"):
        finetune(registry, dataset="toy", tune="last:0", epochs=1)


def test_compare_refuses_a_probe_against_a_full_finetune(registry, tmp_path):
    build_dataset(registry, tmp_path, n=200, size=32)
    kw = dict(dataset="toy", arch="vit_tiny_patch16_224", model_kwargs=TINY, **PROBE)
    full = finetune(registry, **kw)
    probe = finetune(registry, tune="head", **kw)
    for r in (full, probe):
        predict(registry, run_id=r.run_id)
    with pytest.raises(RefusedError) as err:
        compare(registry, runs=[full.run_id, probe.run_id], n_resamples=20)
    assert f"run {full.run_id} (random) is a full fine-tune (tune all)" in str(err.value)
    assert "a linear probe (tune head)" in str(err.value)
    cli = runner.invoke(app, ["--db", _url(registry), "compare", "--run", str(full.run_id), "--run",
                              str(probe.run_id), "--n-resamples", "20"])
    assert cli.exit_code == 1 and "pass --allow-mixed-tuning" in cli.stderr
    mixed = compare(registry, runs=[full.run_id, probe.run_id], n_resamples=20, allow_mixed_tuning=True)
    pair = mixed["pairs"][0]
    assert (pair["tune_a"], pair["tune_b"]) == ("all", "head")
    assert pair["b"] == f"run {probe.run_id} (random) [head]"
    out = runner.invoke(app, ["--db", _url(registry), "compare", "--run", str(full.run_id), "--run",
                              str(probe.run_id), "--n-resamples", "20", "--allow-mixed-tuning"])
    assert out.exit_code == 0 and "tune head" in out.stdout
    from vitmed_cli.report import build_report

    rows = {r.init_name: r for r in build_report(registry, n_resamples=20, figures=False).datasets[0].inits}
    assert set(rows) == {"random", "random [head]"} and rows["random [head]"].tune == "head"
