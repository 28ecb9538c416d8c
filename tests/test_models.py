"""The model factory: heads, position-embedding resampling, input channels, strict loading."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from vitmed_cli import models, weights
from vitmed_cli.errors import WeightsError

DINO_KW = {"depth": 2, "embed_dim": 48, "num_heads": 2}


def _spec(path, arch, *, size, kwargs=None, drop_head=True) -> weights.InitSpec:
    return weights.InitSpec(
        name="test", arch=arch, checkpoint_id=1, path=str(path), sha256=weights.sha256_file(path),
        source_image_size=size, drop_head=drop_head, model_kwargs=dict(kwargs or {}),
    )


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory):
    """A DINOv2-layout file at 70 px (5x5 patches of 14), like the 518-px release in miniature."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=70, **DINO_KW)
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head")}
    sd["mask_token"] = torch.zeros(1, 48)
    path = tmp_path_factory.mktemp("dino") / "dino.pth"
    torch.save(sd, path)
    return path, sd


@pytest.mark.parametrize("size,grid", [(42, 3), (126, 9)])
def test_dinov2_pos_embed_resampled_class_token_untouched(dino_file, size, grid):
    path, saved = dino_file
    model, info = weights.create_model_from_init(
        _spec(path, "vit_small_patch14_dinov2", size=70, kwargs=DINO_KW), 6, size,
        arch="vit_small_patch14_dinov2",
    )
    assert model.patch_embed.patch_size == (14, 14)
    assert model.pos_embed.shape == (1, 1 + grid * grid, 48)
    assert info["pos_embed"] == f"interpolated 5x5 -> {grid}x{grid}"
    assert torch.equal(model.cls_token, saved["cls_token"])
    assert torch.equal(model.pos_embed[:, :1], saved["pos_embed"][:, :1])
    expected = resample_abs_pos_embed(saved["pos_embed"], new_size=(grid, grid), num_prefix_tokens=1)
    assert torch.allclose(model.pos_embed, expected, atol=1e-6)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 6)


def test_imagenet_vit_224_style_upsampled(tmp_path):
    # test_vit is trained at 160 px with 16-px patches (10x10); fine-tuning at 320 px needs 20x20.
    torch.manual_seed(1)
    src = timm.create_model("test_vit", pretrained=False)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    path = tmp_path / "vit.safetensors"
    save_file(sd, str(path))
    model, info = weights.create_model_from_init(_spec(path, "test_vit", size=160), 2, 320, arch="test_vit")
    assert info["pos_embed"] == "interpolated 10x10 -> 20x20"
    assert model.pos_embed.shape == (1, 401, 64)
    assert torch.equal(model.cls_token, sd["cls_token"])
    assert torch.equal(model.pos_embed[:, 0], sd["pos_embed"][:, 0])


def test_random_init_with_tiny_overrides():
    model, info = weights.create_model_from_init(None, 3, 32, arch="vit_base_patch16_224",
                                                 depth=2, embed_dim=64, num_heads=2, patch_size=8)
    assert info["init"] == "random" and info["loaded_keys"] == 0
    assert len(model.blocks) == 2 and model.patch_embed.grid_size == (4, 4)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_grayscale_input_adapts_first_conv(dino_file):
    path, saved = dino_file
    model, info = weights.create_model_from_init(
        _spec(path, "vit_small_patch14_dinov2", size=70, kwargs=DINO_KW), 2, 70,
        arch="vit_small_patch14_dinov2", in_chans=1,
    )
    assert info["in_chans_adapted"] == "adapted 3->1"
    w = saved["patch_embed.proj.weight"]
    assert torch.allclose(model.patch_embed.proj.weight, w.sum(dim=1, keepdim=True))


def test_full_checkpoint_with_head_kept(tmp_path):
    torch.manual_seed(4)
    src = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    path = tmp_path / "best.safetensors"
    save_file(sd, str(path))
    model, info = weights.create_model_from_init(_spec(path, "test_resnet", size=64, drop_head=False), 4, 64)
    assert info["head"] == "loaded"
    assert torch.equal(model.fc.weight, sd["fc.weight"])
    with pytest.raises(WeightsError, match=r"shape mismatches \(2\): fc.bias \(4,\) vs \(3,\), fc.weight \(4, \d+\) vs \(3, \d+\)"):
        weights.create_model_from_init(_spec(path, "test_resnet", size=64, drop_head=False), 3, 64)


def test_unknown_arch_lists_close_names():
    with pytest.raises(WeightsError, match=r"unknown timm architecture 'vit_base_patch16_2244' - did you mean .*vit_base_patch16_224"):
        models.create_model("vit_base_patch16_2244", 2, 224)


def test_bad_model_kwargs_are_a_clear_error():
    with pytest.raises(WeightsError, match="cannot build test_vit .* - check `arch` and `model_kwargs`"):
        models.create_model("test_vit", 2, 64, None, depth="two")


def test_missing_registered_file(tmp_path, dino_file):
    path, _ = dino_file
    spec = _spec(path, "vit_small_patch14_dinov2", size=70, kwargs=DINO_KW)
    gone = weights.InitSpec(**{**spec.__dict__, "path": str(tmp_path / "moved.pth")})
    with pytest.raises(WeightsError, match="no longer exist - restore the file or register it again"):
        weights.create_model_from_init(gone, 2, 70)
