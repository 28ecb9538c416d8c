"""pretrain-load and the weights module: safe reading, strict checks, registration, resolution.

Small models of the study's families are built on the fly (a DINOv2-layout ViT
with LayerScale, an ImageNet-style ViT, a ResNet), saved in each official
format and registered through the real code path.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from sqlalchemy import func, select
from typer.testing import CliRunner

from vitmed_cli import weights
from vitmed_cli.cli import app
from vitmed_cli.errors import WeightsError
from vitmed_cli.registry.models import Checkpoint, Dataset, Run, Split

DINO_ARCH = "vit_small_patch14_dinov2"
DINO_KW = {"depth": 2, "embed_dim": 48, "num_heads": 2}
runner = CliRunner()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dinov2_official(folder: Path) -> tuple[Path, dict]:
    """A tiny ViT saved like dinov2_vitb14_pretrain.pth: no head, with mask_token, LayerScale."""
    torch.manual_seed(0)
    model = timm.create_model(DINO_ARCH, pretrained=False, img_size=70, **DINO_KW)
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head")}
    assert any(k.endswith("ls1.gamma") for k in sd)
    sd["mask_token"] = torch.randn(1, 48)
    path = folder / "dinov2_vits14_tiny_pretrain.pth"
    torch.save(sd, path)
    return path, sd


def _test_vit_safetensors(folder: Path, name: str = "model.safetensors") -> tuple[Path, dict]:
    torch.manual_seed(1)
    model = timm.create_model("test_vit", pretrained=False)
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    path = folder / name
    save_file(sd, str(path))
    return path, sd


def _resnet_pth(folder: Path) -> tuple[Path, dict]:
    torch.manual_seed(2)
    model = timm.create_model("test_resnet", pretrained=False)
    for m in model.modules():  # non-trivial BN statistics, so equality means they were loaded
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    path = folder / "resnet.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    return path, sd


def _count(registry) -> int:
    with registry.session() as s:
        return s.scalar(select(func.count()).select_from(Checkpoint))


def _assert_loaded(model: torch.nn.Module, saved: dict, skip=("head", "fc", "mask_token")) -> None:
    state = model.state_dict()
    compared = 0
    for key, value in saved.items():
        if key.split(".")[0] in skip:
            continue
        assert torch.equal(state[key], value), key
        compared += 1
    assert compared > 10


@pytest.fixture
def empty_hub(tmp_path, monkeypatch) -> Path:
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return hub


# --------------------------------------------------------------------------- registration


def test_dinov2_official_file_registers_and_loads_exactly(registry, tmp_path, empty_hub):
    path, saved = _dinov2_official(tmp_path)
    result = weights.pretrain_load(registry, "dinov2", file=path, arch=DINO_ARCH, model_kwargs=DINO_KW)
    assert not result.existing
    assert result.sha256 == _sha(path)
    assert result.source == "file" and result.init == "dinov2" and result.path == str(path.resolve())
    assert result.image_size == 70
    expected_params = sum(p.numel() for p in timm.create_model(
        DINO_ARCH, pretrained=False, img_size=70, num_classes=0, **DINO_KW).parameters())
    assert result.n_params == expected_params
    with registry.session() as s:
        row = s.get(Checkpoint, result.checkpoint_id)
        assert row.role == "init" and row.arch == DINO_ARCH
        assert row.meta["model_kwargs"] == DINO_KW
        assert row.meta["ignored_keys"] == ["mask_token"]
        spec = weights.resolve_init(s, "dinov2")
    assert spec.checkpoint_id == result.checkpoint_id and spec.sha256 == result.sha256
    assert spec.drop_head and spec.source_image_size == 70
    model, info = weights.create_model_from_init(spec, 4, 70)
    _assert_loaded(model, saved)
    assert info["loaded_keys"] == len(saved) - 1  # all but mask_token
    assert info["head"] == "new" and info["pos_embed"] == "kept 5x5"
    assert model.head.out_features == 4


def test_same_file_again_is_a_noop(registry, tmp_path, empty_hub):
    path, _ = _dinov2_official(tmp_path)
    first = weights.pretrain_load(registry, "dinov2", file=path, arch=DINO_ARCH, model_kwargs=DINO_KW)
    again = weights.pretrain_load(registry, "dinov2", file=path, arch=DINO_ARCH, model_kwargs=DINO_KW,
                                  name="other-label")
    assert again.existing and again.checkpoint_id == first.checkpoint_id
    assert _count(registry) == 1


def test_imagenet_style_safetensors_with_head(registry, tmp_path, empty_hub):
    path, saved = _test_vit_safetensors(tmp_path)
    result = weights.pretrain_load(registry, "imagenet", file=path, arch="test_vit")
    assert result.sha256 == _sha(path) and result.image_size == 160
    with registry.session() as s:
        row = s.get(Checkpoint, result.checkpoint_id)
        assert row.meta["head_keys"] == ["head.bias", "head.weight"]
        spec = weights.resolve_init(s, "imagenet", arch="test_vit")
    model, info = weights.create_model_from_init(spec, 3, 160, arch="test_vit")
    _assert_loaded(model, saved)
    assert model.head.out_features == 3 and info["head"] == "new"


def test_timm_bin_wrapped_in_state_dict_with_module_prefix(tmp_path):
    _, saved = _test_vit_safetensors(tmp_path)
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.items()}, "step": 7}, path)
    sd = weights.read_state_dict(path)
    assert sd.keys() == saved.keys()
    assert all(torch.equal(sd[k], saved[k]) for k in saved)


def test_resnet_from_a_file_any_timm_arch(registry, tmp_path):
    path, saved = _resnet_pth(tmp_path)
    result = weights.pretrain_load(registry, "file", file=path, arch="test_resnet", name="resnet-test")
    counted = sum(p.numel() for p in timm.create_model("test_resnet", pretrained=False, num_classes=0).parameters())
    assert result.init == "resnet-test" and result.n_params == counted
    with registry.session() as s:
        spec = weights.resolve_init(s, "resnet-test")
    model, info = weights.create_model_from_init(spec, 2, 64)
    _assert_loaded(model, saved)
    assert model.get_classifier().out_features == 2
    assert info["pos_embed"] is None


def test_resnet_file_offered_as_vit_is_refused_with_keys(registry, tmp_path):
    path, _ = _resnet_pth(tmp_path)
    with pytest.raises(WeightsError) as err:
        weights.pretrain_load(registry, "dinov2", file=path, arch=DINO_ARCH, model_kwargs=DINO_KW)
    msg = str(err.value)
    assert "does not fit vit_small_patch14_dinov2 (it looks like a ResNet)" in msg
    assert "missing keys" in msg and "cls_token" in msg
    assert "unexpected keys" in msg and "conv1.0.weight" in msg
    assert _count(registry) == 0


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_runs_code_is_refused_and_never_runs(registry, tmp_path, writer):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    payload = {"cls_token": torch.zeros(1, 1, 4), "x": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(WeightsError) as err:
        weights.pretrain_load(registry, "dinov2", file=path, arch=DINO_ARCH, model_kwargs=DINO_KW)
    assert "refused: it contains code, not only tensors" in str(err.value)
    assert "system" in str(err.value)
    assert not marker.exists()
    assert _count(registry) == 0


def test_not_a_weights_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(WeightsError, match="cannot read .* as a PyTorch weights file"):
        weights.read_state_dict(path)


def test_patch_size_mismatch_is_refused(tmp_path, registry):
    # test_vit has 16-px patches; the DINOv2 family uses 14.
    path, _ = _test_vit_safetensors(tmp_path)
    with pytest.raises(WeightsError, match=r"has \(16, 16\) patches but vit_small_patch14_dinov2 uses \(14, 14\)"):
        weights.pretrain_load(registry, "dinov2", file=path, arch=DINO_ARCH,
                              model_kwargs={"depth": 2, "embed_dim": 64, "num_heads": 2})


# --------------------------------------------------------------------------- resolution


def test_nothing_registered_names_the_file_and_command(registry, empty_hub):
    with registry.session() as s, pytest.raises(WeightsError) as err:
        weights.resolve_init(s, "dinov2")
    assert str(err.value) == (
        "no DINOv2 weights registered - download dinov2_vitb14_pretrain.pth from "
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth and run: "
        "vitmed pretrain-load dinov2 --file dinov2_vitb14_pretrain.pth"
    )
    with registry.session() as s, pytest.raises(WeightsError) as err:
        weights.resolve_init(s, "imagenet")
    assert "timm/vit_base_patch16_224.augreg_in21k" in str(err.value)
    assert str(err.value).endswith("run: vitmed pretrain-load imagenet --file model.safetensors")


def test_random_and_unknown_names(registry):
    with registry.session() as s:
        spec = weights.resolve_init(s, "random")
        assert spec.checkpoint_id is None and spec.arch == weights.DEFAULT_ARCH["random"]
        with pytest.raises(WeightsError, match="unknown initialisation 'dino' - use one of: random, dinov2"):
            weights.resolve_init(s, "dino")
        with pytest.raises(WeightsError, match="write run:<id> with a number"):
            weights.resolve_init(s, "run:abc")


def _fake_hub(hub: Path, repo: str, source: Path) -> Path:
    folder = hub / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    target = snap / "model.safetensors"
    target.write_bytes(source.read_bytes())
    return target


def test_hub_cache_is_found_offline_and_registered(registry, tmp_path, empty_hub):
    src, saved = _test_vit_safetensors(tmp_path, "src.safetensors")
    cached = _fake_hub(empty_hub, "timm/test_vit.r160_in1k", src)
    assert weights.find_hub_weights("test_vit") == cached
    with registry.session() as s:
        spec = weights.resolve_init(s, "imagenet", arch="test_vit")
    with registry.session() as s:
        row = s.get(Checkpoint, spec.checkpoint_id)
        assert row.source == "hub-cache" and row.sha256 == _sha(src)
    model, _ = weights.create_model_from_init(spec, 2, 160, arch="test_vit")
    _assert_loaded(model, saved)
    # pretrain-load without --file finds the same file and reports it as registered.
    result = weights.pretrain_load(registry, "imagenet", arch="test_vit")
    assert result.existing and result.checkpoint_id == spec.checkpoint_id


def _run_with_best(registry, tmp_path, *, with_best: bool = True):
    """A finished run whose best checkpoint is a full test_vit state dict (head included)."""
    torch.manual_seed(3)
    model = timm.create_model("test_vit", pretrained=False, num_classes=5, img_size=64)
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "best.safetensors"
    save_file(sd, str(path))
    with registry.session() as s:
        ds = Dataset(name="mimic", format="csv", source_path="/x", image_size=64)
        s.add(ds)
        s.flush()
        split = Split(dataset_id=ds.id, name="s", method="random")
        s.add(split)
        s.flush()
        run = Run(dataset_id=ds.id, split_id=split.id, init_name="random", arch="test_vit",
                  image_size=64, seed=0, epochs_planned=1, status="completed")
        s.add(run)
        s.flush()
        if with_best:
            weights.register_checkpoint(
                s, path, arch="test_vit", init="random", source="run", role="best", run_id=run.id,
                epoch=1, image_size=64, findings=["a", "b", "c", "d", "e"],
            )
        return run.id, sd


def test_run_checkpoint_as_init_drops_head_and_resamples(registry, tmp_path):
    run_id, saved = _run_with_best(registry, tmp_path)
    with registry.session() as s:
        spec = weights.resolve_init(s, f"run:{run_id}")
        best = s.scalar(select(Checkpoint).where(Checkpoint.role == "best"))
        assert best.n_params == sum(v.numel() for v in saved.values())
    assert spec.name == f"run:{run_id}" and spec.drop_head and spec.source_image_size == 64
    assert spec.findings == ("a", "b", "c", "d", "e")
    model, info = weights.create_model_from_init(spec, 3, 96)
    assert info["head"] == "new" and info["head_dropped"] == ["head.bias", "head.weight"]
    assert info["pos_embed"] == "interpolated 4x4 -> 6x6"
    assert torch.equal(model.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    assert torch.equal(model.cls_token, saved["cls_token"])

    # Registered under a study name, it resolves by that name; registering again is a no-op.
    named = weights.pretrain_load(registry, f"run:{run_id}", name="mimic-supervised")
    again = weights.pretrain_load(registry, f"run:{run_id}", name="mimic-supervised")
    assert again.existing and again.checkpoint_id == named.checkpoint_id
    with registry.session() as s:
        by_name = weights.resolve_init(s, "mimic-supervised")
    assert by_name.sha256 == spec.sha256 and by_name.name == "mimic-supervised"


def test_run_without_best_checkpoint(registry, tmp_path):
    run_id, _ = _run_with_best(registry, tmp_path, with_best=False)
    with registry.session() as s:
        with pytest.raises(WeightsError, match=f"run {run_id} has no best checkpoint yet"):
            weights.resolve_init(s, f"run:{run_id}")
        with pytest.raises(WeightsError, match="no run 99 in the registry"):
            weights.resolve_init(s, "run:99")


def test_changed_file_is_refused_at_load_time(registry, tmp_path, empty_hub):
    path, _ = _dinov2_official(tmp_path)
    weights.pretrain_load(registry, "dinov2", file=path, arch=DINO_ARCH, model_kwargs=DINO_KW)
    with registry.session() as s:
        spec = weights.resolve_init(s, "dinov2")
    sd = torch.load(path, weights_only=True)
    sd["cls_token"] += 1
    torch.save(sd, path)
    with pytest.raises(WeightsError, match="changed since it was registered"):
        weights.create_model_from_init(spec, 2, 70)


def test_register_checkpoint_is_idempotent_on_sha_arch_role(any_registry, tmp_path):
    registry = any_registry
    path, _ = _test_vit_safetensors(tmp_path)
    with registry.session() as s:
        a = weights.register_checkpoint(s, path, arch="test_vit", init="x", source="file")
        b = weights.register_checkpoint(s, path, arch="test_vit", init="y", source="file")
        c = weights.register_checkpoint(s, path, arch="test_vit", init="x", source="file", role="last")
        assert a.id == b.id != c.id
        assert a.sha256 == _sha(path)


# --------------------------------------------------------------------------- CLI


def _cli(url, *args):
    return runner.invoke(app, ["--db", url, *map(str, args)])


def _one_line_error(result, text: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and text in lines[0]
    assert "Traceback" not in result.output


def test_cli_pretrain_load_json_and_checkpoints_list(sqlite_url, tmp_path, empty_hub):
    path, _ = _dinov2_official(tmp_path)
    result = _cli(sqlite_url, "pretrain-load", "dinov2", "--file", path, "--arch", DINO_ARCH,
                  "--model-kwargs", json.dumps(DINO_KW), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["sha256"] == _sha(path) and doc["existing"] is False and doc["init"] == "dinov2"
    assert {"checkpoint_id", "arch", "n_params", "source", "path"} <= doc.keys()
    again = json.loads(_cli(sqlite_url, "pretrain-load", "dinov2", "--file", path, "--arch",
                            DINO_ARCH, "--json").stdout)
    assert again["existing"] is True and again["checkpoint_id"] == doc["checkpoint_id"]
    listed = json.loads(_cli(sqlite_url, "checkpoints", "list", "--json").stdout)
    assert [(r["id"], r["sha256"]) for r in listed] == [(doc["checkpoint_id"], doc["sha256"])]
    table = _cli(sqlite_url, "pretrain-load", "dinov2", "--file", path, "--arch", DINO_ARCH)
    assert table.exit_code == 0 and "already registered" in table.stdout


def test_cli_errors_are_one_line(sqlite_url, tmp_path):
    _one_line_error(_cli(sqlite_url, "pretrain-load", "dinov2", "--file", tmp_path / "nope.pth"),
                    f"weights file {tmp_path / 'nope.pth'} does not exist - check the path")
    resnet, _ = _resnet_pth(tmp_path)
    _one_line_error(_cli(sqlite_url, "pretrain-load", "dinov2", "--file", resnet, "--arch", DINO_ARCH,
                         "--model-kwargs", json.dumps(DINO_KW)),
                    "(it looks like a ResNet): missing keys (")
    evil = tmp_path / "evil.pth"
    torch.save({"x": _RunsCode(tmp_path / "ran")}, evil)
    _one_line_error(_cli(sqlite_url, "pretrain-load", "dinov2", "--file", evil),
                    "refused: it contains code, not only tensors")
    assert not (tmp_path / "ran").exists()
    _one_line_error(_cli(sqlite_url, "pretrain-load", "dino", "--file", resnet),
                    "unknown initialisation 'dino' for pretrain-load - use one of: dinov2, imagenet, "
                    "dinov3, hf, timm:NAME, file (any timm --arch) or run:<id>")
    _one_line_error(_cli(sqlite_url, "pretrain-load", "file", "--file", resnet),
                    "add --arch TIMM_NAME")
    _one_line_error(_cli(sqlite_url, "pretrain-load", "file", "--file", resnet, "--arch", "resnet_nope"),
                    "unknown timm architecture 'resnet_nope' - did you mean")
    _one_line_error(_cli(sqlite_url, "pretrain-load", "file", "--file", resnet, "--arch", "test_resnet",
                         "--model-kwargs", "{depth"), "--model-kwargs is not valid JSON")
    assert json.loads(_cli(sqlite_url, "checkpoints", "list", "--json").stdout) == []
