"""Where registered weights come from: their family (DINOv2, DINOv3, HF, timm, run), the timm
architecture an official DINOv3 file is, and the licence note a release carries.

A family and its licence are stored with the checkpoint (``Checkpoint.meta["family"]``,
``meta["licence"]``) when it is registered; :func:`family_of` also names the family of rows
registered before vitmed recorded it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch

DINOV2, DINOV3, HF, TIMM, RUN = "DINOv2", "DINOv3", "HF", "timm", "run"

DINOV3_LICENCE = ("DINOv3 License (Meta), not the DINOv2 Apache-2.0 licence: "
                  "https://ai.meta.com/resources/models-and-libraries/dinov3-license/")
DINOV2_LICENCE = "Apache-2.0 (DINOv2)"

# The official release's ViTs by width: (timm architecture, depth).  Biases of the distilled
# ViTs are all zero, and timm builds those without them; a file with non-zero qkv biases is
# the ``_qkvb`` variant.
_DINOV3_VITS = {
    384: ("vit_small_patch16_dinov3", 12),
    768: ("vit_base_patch16_dinov3", 12),
    1024: ("vit_large_patch16_dinov3", 24),
    1280: ("vit_huge_plus_patch16_dinov3", 32),
    4096: ("vit_7b_patch16_dinov3", 40),
}
# ConvNeXt by (stem width, blocks in stage 3)
_DINOV3_CONVNEXTS = {
    (96, 9): "convnext_tiny", (96, 27): "convnext_small", (128, 27): "convnext_base",
    (192, 27): "convnext_large",
}


def _blocks(state: Mapping[str, Any], prefix: str) -> int:
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in state
             if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()}
    return max(found) + 1 if found else 0


def dinov3_arch(state: Mapping[str, "torch.Tensor"]) -> str | None:
    """The timm architecture (with its DINOv3 tag) of an official DINOv3 release file, or None
    when the file is none of the released sizes (then the user names `arch`)."""
    if "storage_tokens" in state and "cls_token" in state:
        width = int(state["cls_token"].shape[-1])
        arch, depth = _DINOV3_VITS.get(width, (None, 0))
        if arch is None or _blocks(state, "blocks.") != depth:
            return None
        if width == 384 and any(k.startswith("blocks.0.mlp.w") for k in state):  # SwiGLU: ViT-S+
            arch = "vit_small_plus_patch16_dinov3"
        bias = state.get("blocks.0.attn.qkv.bias")
        if bias is not None and bool((bias != 0).any()):
            arch += "_qkvb"
        return f"{arch}.lvd1689m"
    stem = state.get("downsample_layers.0.0.weight")
    if stem is not None:
        name = _DINOV3_CONVNEXTS.get((int(stem.shape[0]), _blocks(state, "stages.2.")))
        return f"{name}.dinov3_lvd1689m" if name else None
    return None


def timm_licence(arch: str) -> str | None:
    """The licence timm's pretrained config names for ``arch`` (with its tag), if any."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(arch)
    except Exception:  # noqa: BLE001 - unknown tags have no config
        return None
    licence = getattr(cfg, "license", None) if cfg is not None else None
    if licence == "dinov3-license":
        return DINOV3_LICENCE
    return licence or None


def family_of(init: str, source: str, meta: Mapping[str, Any] | None) -> str:
    """The family a checkpoint row belongs to (recorded, or read from rows registered earlier)."""
    meta = meta or {}
    if meta.get("family"):
        return str(meta["family"])
    if source == "run":
        return RUN
    if init == "dinov2":
        return DINOV2
    return TIMM


def licence_of(init: str, source: str, meta: Mapping[str, Any] | None) -> str | None:
    """The licence note of a checkpoint row: recorded, or DINOv2's for rows registered earlier."""
    meta = meta or {}
    if meta.get("licence"):
        return str(meta["licence"])
    return DINOV2_LICENCE if family_of(init, source, meta) == DINOV2 else None


__all__ = ["DINOV2", "DINOV3", "DINOV3_LICENCE", "HF", "RUN", "TIMM", "dinov3_arch", "family_of",
           "licence_of", "timm_licence"]
