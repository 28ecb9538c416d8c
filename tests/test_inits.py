"""Initialisations beyond the study's three: official DINOv3 ViT and ConvNeXt files, a transformers
DINOv2 snapshot, timm weights in the Hugging Face cache, non-ViT architectures end to end.

The files are written here from timm's (and transformers') small random models in the
publishers' own layouts, then go through pretrain-load, finetune, predict, compare and report.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sqlalchemy import func, select
from typer.testing import CliRunner

from helpers import (
    DINOV3_CONVNEXT,
    DINOV3_CONVNEXT_KW,
    DINOV3_VIT,
    DINOV3_VIT_KW,
    HF_DINOV2_CONFIG,
    HF_MEAN,
    HF_STD,
    build_dataset,
    write_dinov3_convnext,
    write_dinov3_vit,
    write_hf_dinov2,
    write_hub_entry,
)
from vitmed_cli import weights
from vitmed_cli.cli import app
from vitmed_cli.compare import compare
from vitmed_cli.errors import ConfigError, WeightsError
from vitmed_cli.evaluations import predict
from vitmed_cli.inference import model_norm
from vitmed_cli.registry.models import Checkpoint, Run
from vitmed_cli.report import build_report
from vitmed_cli.training import finetune
from vitmed_cli.weights.families import DINOV2_LICENCE, DINOV3_LICENCE, dinov3_arch

runner = CliRunner()
TIMM_NAME = "test_vit.r160_in1k"


def _url(registry) -> str:
    return registry.engine.url.render_as_string(hide_password=False)


def _cli(registry, *args):
    result = runner.invoke(app, ["--db", _url(registry), *map(str, args)])
    return result


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _assert_equal_state(model: torch.nn.Module, timm_sd: dict) -> None:
    state = model.state_dict()
    for key, value in timm_sd.items():
        if key.startswith("head"):
            continue
        assert torch.equal(state[key], value), key


# --------------------------------------------------------------------------- DINOv3


@pytest.mark.parametrize("arch", [DINOV3_VIT, DINOV3_VIT + "_qkvb"])
def test_dinov3_vit_release_file_loads_exactly(registry, tmp_path, arch):
    path, timm_sd = write_dinov3_vit(tmp_path, arch=arch)
    out = _json(_cli(registry, "pretrain-load", "dinov3", "--file", path, "--arch", arch,
                     "--model-kwargs", json.dumps(DINOV3_VIT_KW), "--json"))
    assert out["init"] == "dinov3" and out["arch"] == arch
    with registry.session() as s:
        row = s.get(Checkpoint, out["checkpoint_id"])
        assert row.meta["family"] == "DINOv3" and row.meta["licence"] == DINOV3_LICENCE
        # pretraining-only tensors are left out by timm's filter, and listed
        assert {"mask_token", "rope_embed.periods", "blocks.0.attn.qkv.bias_mask"} <= set(row.meta["ignored_keys"])
        assert ("blocks.0.attn.qkv.bias" in row.meta["ignored_keys"]) == (not arch.endswith("_qkvb"))
        spec = weights.resolve_init(s, "dinov3")
    # RoPE: any size the patch divides, nothing to interpolate
    model, info = weights.create_model_from_init(spec, 3, 48)
    _assert_equal_state(model, timm_sd)
    if arch.endswith("_qkvb"):  # the release's fused bias was split into timm's q and v biases
        assert torch.count_nonzero(model.state_dict()["blocks.0.attn.q_bias"]) > 0
    assert info["pos_embed"].startswith("none: rotary (RoPE)")
    assert model.reg_token.shape[1] == timm_sd["reg_token"].shape[1]  # storage tokens kept


def test_dinov3_convnext_release_file_loads_exactly(registry, tmp_path):
    path, timm_sd = write_dinov3_convnext(tmp_path)
    result = weights.pretrain_load(registry, "dinov3", file=path, arch=DINOV3_CONVNEXT,
                                   model_kwargs=DINOV3_CONVNEXT_KW, name="dinov3-convnext")
    assert result.init == "dinov3-convnext"
    with registry.session() as s:
        spec = weights.resolve_init(s, "dinov3-convnext")
    model, info = weights.create_model_from_init(spec, 2, 64)
    _assert_equal_state(model, timm_sd)
    assert info["pos_embed"] is None and model.get_classifier().out_features == 2
    # ConvNeXt has no patches: 72 px is fine (a ViT with patch 16 would refuse it)
    weights.create_model_from_init(spec, 2, 72)


def test_dinov3_architecture_is_read_from_a_release_file():
    meta = lambda *shape: torch.empty(*shape, device="meta")  # noqa: E731 - shapes only
    vitb = {"cls_token": meta(1, 1, 768), "storage_tokens": meta(1, 4, 768),
            **{f"blocks.{i}.norm1.weight": meta(768) for i in range(12)},
            "blocks.0.attn.qkv.bias": torch.zeros(3 * 768)}
    assert dinov3_arch(vitb) == "vit_base_patch16_dinov3.lvd1689m"
    assert dinov3_arch({**vitb, "blocks.0.attn.qkv.bias": torch.ones(3 * 768)}) == \
        "vit_base_patch16_dinov3_qkvb.lvd1689m"
    convnext_b = {"downsample_layers.0.0.weight": meta(128, 3, 4, 4),
                  **{f"stages.2.{i}.gamma": meta(512) for i in range(27)}}
    assert dinov3_arch(convnext_b) == "convnext_base.dinov3_lvd1689m"
    assert dinov3_arch({"cls_token": meta(1, 1, 32), "storage_tokens": meta(1, 4, 32)}) is None


def test_dinov3_unknown_size_asks_for_the_arch(registry, tmp_path):
    path, _ = write_dinov3_vit(tmp_path)
    with pytest.raises(WeightsError, match="cannot tell which model .* add `arch`, e.g. vit_base_patch16_dinov3"):
        weights.pretrain_load(registry, "dinov3", file=path)
    with pytest.raises(WeightsError, match="pretrain-load dinov3 needs the release file"):
        weights.pretrain_load(registry, "dinov3")


# --------------------------------------------------------------------------- Hugging Face snapshots


def test_hf_snapshot_gives_the_same_features_as_transformers(registry, tmp_path):
    folder, hf_model = write_hf_dinov2(tmp_path / "rad-dino-tiny")
    out = _json(_cli(registry, "pretrain-load", "hf", "--dir", folder, "--json"))
    assert out["init"] == "rad-dino-tiny" and out["arch"] == "vit_base_patch14_dinov2.lvd142m"
    assert out["image_size"] == HF_DINOV2_CONFIG["image_size"]
    with registry.session() as s:
        row = s.get(Checkpoint, out["checkpoint_id"])
        assert row.path == str((folder / "model.safetensors").resolve())  # the publisher's file, hashed
        assert row.meta["family"] == "HF" and row.meta["layout"] == "hf-dinov2"
        assert row.meta["licence"] == "msrla (https://example.org/msrla)"
        spec = weights.resolve_init(s, "rad-dino-tiny")
    model, info = weights.create_model_from_init(spec, 2, 32)
    assert info["loaded_keys"] > 0 and info["head"] == "new"
    assert model_norm(model) == (tuple(HF_MEAN), tuple(HF_STD))  # the snapshot's own normalisation
    model.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.forward_features(x)[:, 0]
        theirs = hf_model(pixel_values=x).last_hidden_state[:, 0]
    assert ours.abs().mean() > 0.1  # real features, not zeros
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_hf_snapshot_of_another_model_type_is_refused(registry, tmp_path):
    folder, _ = write_hf_dinov2(tmp_path / "snap")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "vit"}))
    with pytest.raises(WeightsError, match="holds a vit model .* takes DINOv2-family encoders"):
        weights.pretrain_load(registry, "hf", dir=folder)
    with pytest.raises(WeightsError, match="has no config.json"):
        weights.pretrain_load(registry, "hf", dir=tmp_path)
    with pytest.raises(WeightsError, match="needs the snapshot folder"):
        weights.pretrain_load(registry, "hf")


# --------------------------------------------------------------------------- timm:NAME


@pytest.fixture
def hub(monkeypatch, tmp_path):
    folder = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    return folder


def test_timm_name_resolves_from_the_cache_offline(registry, hub):
    with registry.session() as s, pytest.raises(WeightsError) as err:
        weights.resolve_init(s, f"timm:{TIMM_NAME}")
    msg = str(err.value)
    assert "https://huggingface.co/timm/test_vit.r160_in1k" in msg and "model.safetensors" in msg
    assert "--allow-network" in msg
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Checkpoint)) == 0

    path, saved = write_hub_entry(hub, TIMM_NAME)
    with registry.session() as s:
        spec = weights.resolve_init(s, f"timm:{TIMM_NAME}")
        row = s.get(Checkpoint, spec.checkpoint_id)
        assert row.source == "hub-cache" and row.meta["family"] == "timm"
        assert row.meta["licence"] == "apache-2.0"
    assert spec.sha256 == weights.sha256_file(path) and spec.arch == TIMM_NAME
    model, _ = weights.create_model_from_init(spec, 2, 160)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items() if not k.startswith("head"))


def test_patch_size_that_does_not_divide_the_image_is_refused(registry, tmp_path):
    build_dataset(registry, tmp_path, n=60)
    with pytest.raises(ConfigError) as err:
        finetune(registry, dataset="toy", arch="vit_tiny_patch16_224", image_size=36, epochs=1,
                 model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2})
    assert str(err.value) == (
        "`image_size` 36 is not a multiple of the patch size 8 of vit_tiny_patch16_224 (the last 4 "
        "pixel rows and columns would be dropped) - use 32 or 40")
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0  # refused before any run row
    result = _cli(registry, "finetune", "--dataset", "toy", "--arch", "vit_tiny_patch16_224",
                  "--image-size", "36", "--model-kwargs", '{"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}')
    assert result.exit_code == 1 and "Error: --image-size 36 is not a multiple of the patch size 8" in result.stderr


# --------------------------------------------------------------------------- all of them, end to end


def test_every_family_registers_finetunes_and_compares_in_one_call(registry, tmp_path, hub, monkeypatch):
    """DINOv2 (official file), DINOv3 ViT and ConvNeXt (release layout), an HF snapshot and a timm
    cache entry: registered, fine-tuned, predicted, compared in one call and reported."""
    build_dataset(registry, tmp_path / "data", n=200, size=32)
    import timm

    torch.manual_seed(5)
    dino = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=28, depth=1,
                             embed_dim=32, num_heads=2, patch_size=8)
    sd = {k: v for k, v in dino.state_dict().items() if not k.startswith("head")}
    sd["mask_token"] = torch.zeros(1, 32)
    torch.save(sd, tmp_path / "dinov2_tiny_pretrain.pth")
    vit3, _ = write_dinov3_vit(tmp_path)
    conv3, _ = write_dinov3_convnext(tmp_path)
    snap, _ = write_hf_dinov2(tmp_path / "rad-dino")
    write_hub_entry(hub, TIMM_NAME)
    for args in (["dinov2", "--file", tmp_path / "dinov2_tiny_pretrain.pth", "--arch", "vit_small_patch14_dinov2",
                  "--model-kwargs", '{"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}'],
                 ["dinov3", "--file", vit3, "--arch", DINOV3_VIT, "--model-kwargs", json.dumps(DINOV3_VIT_KW),
                  "--name", "dinov3-vit"],
                 ["dinov3", "--file", conv3, "--arch", DINOV3_CONVNEXT,
                  "--model-kwargs", json.dumps(DINOV3_CONVNEXT_KW), "--name", "dinov3-convnext"],
                 ["hf", "--dir", snap],
                 [f"timm:{TIMM_NAME}"]):
        _json(_cli(registry, "pretrain-load", *args, "--json"))
    inits = ["dinov2", "dinov3-vit", "dinov3-convnext", "rad-dino", f"timm:{TIMM_NAME}"]
    for init in inits:
        run = finetune(registry, dataset="toy", init=init, epochs=1, lr=2e-3, batch_size=32, seed=0)
        assert run.status == "completed"
        predict(registry, run_id=run.run_id)
    result = compare(registry, dataset="toy", inits=inits, n_resamples=50)
    assert len(result["pairs"]) == 10
    assert {p["a"] for p in result["pairs"]} | {p["b"] for p in result["pairs"]} == set(inits)
    assert {p["tune_a"] for p in result["pairs"]} == {"all"}

    rows = {r["name"]: r for r in _json(_cli(registry, "checkpoints", "list", "--role", "init", "--json"))}
    assert {n: r["family"] for n, r in rows.items()} == {
        "dinov2": "DINOv2", "dinov3-vit": "DINOv3", "dinov3-convnext": "DINOv3", "rad-dino": "HF",
        f"timm:{TIMM_NAME}": "timm"}
    assert rows["dinov3-vit"]["licence"] == DINOV3_LICENCE != rows["dinov2"]["licence"] == DINOV2_LICENCE
    from vitmed_cli.cli import _common

    monkeypatch.setattr(_common.console, "width", 400)  # room for every column
    table = _cli(registry, "checkpoints", "list")
    assert table.exit_code == 0 and "family" in table.stdout and "licence" in table.stdout
    assert "DINOv3" in table.stdout and "rad-dino" in table.stdout
    report = build_report(registry, n_resamples=20, figures=False)
    assert {r.init_name for r in report.datasets[0].inits} == set(inits)
    with registry.session() as s:
        archs = {r.init_name: r.arch for r in s.scalars(select(Run))}
    assert archs["dinov3-convnext"] == DINOV3_CONVNEXT and archs[f"timm:{TIMM_NAME}"] == TIMM_NAME
    assert np.isfinite([p["macro"]["auc_a"] for p in result["pairs"]]).all()
