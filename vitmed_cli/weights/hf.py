"""Hugging Face ``transformers`` snapshots of DINOv2-family encoders (e.g. RAD-DINO) as timm ViTs.

A snapshot is the folder ``save_pretrained`` writes: ``config.json`` and ``model.safetensors``
(``preprocessor_config.json`` and ``README.md`` where the publisher ships them).  Its
``Dinov2Model`` is the same network as timm's ``vit_*_patch14_dinov2``: class token and
learned position embeddings, pre-norm blocks with LayerScale, a final LayerNorm.  The
snapshot's tensors are renamed (and query/key/value joined into timm's one ``qkv``) by
:func:`dinov2_to_timm` each time they are loaded; the file registered, and hashed, is the
publisher's own.  The snapshot's input mean/std come along as timm's pretrained-config
overlay, so vitmed normalises inputs as the publisher did.

``transformers`` is not needed: the files are read as JSON and safetensors.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util import first_line
from ..errors import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import torch

LAYOUT = "hf-dinov2"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# timm's DINOv2 ViTs by width: (size name, depth, heads)
_SIZES = {384: ("small", 12, 6), 768: ("base", 12, 12), 1024: ("large", 24, 16),
          1536: ("giant", 40, 24)}
_TIMM_PATCH = 14
_TIMM_MLP_RATIO = 4.0
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class HfSnapshot:
    """A checked ``save_pretrained`` folder and the timm model it converts to."""

    folder: Path
    weights: Path
    config: dict[str, Any]
    config_sha256: str
    arch: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    licence: str | None = None

    @property
    def default_name(self) -> str:
        """``owner/name`` for a snapshot inside a Hugging Face cache, else the folder's name."""
        parts = self.folder.parts
        if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
            return parts[-3][len("models--"):].replace("--", "/")
        return self.folder.name


def _readme_licence(folder: Path) -> str | None:
    """The ``license:`` (and ``license_link:``) of a model card's YAML front matter."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    front = text[3:].split("\n---", 1)[0]
    found = dict(re.findall(r"^(license|license_name|license_link):\s*(.+?)\s*$", front, re.M))
    licence = found.get("license_name") or found.get("license")
    if not licence:
        return None
    link = found.get("license_link")
    return f"{licence} ({link})" if link else licence


def _norm_overlay(folder: Path) -> dict[str, Any]:
    """The publisher's input mean/std (``preprocessor_config.json``) as a timm config overlay."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        pre = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read {path} ({first_line(exc)}) - restore the snapshot's file") from exc
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        return {}
    return {"pretrained_cfg_overlay": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}}


def timm_equivalent(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The timm architecture of a ``Dinov2Model`` config, and the kwargs where it differs."""
    hidden = int(config.get("hidden_size", 768))
    depth = int(config.get("num_hidden_layers", 12))
    heads = int(config.get("num_attention_heads", 12))
    patch = int(config.get("patch_size", _TIMM_PATCH))
    mlp = float(config.get("mlp_ratio", _TIMM_MLP_RATIO))
    size, d0, h0 = _SIZES.get(hidden, ("base", 12, 12))
    arch = f"vit_{size}_patch14_dinov2.lvd142m"
    kwargs: dict[str, Any] = {}
    if hidden not in _SIZES:
        kwargs["embed_dim"] = hidden
    if depth != d0:
        kwargs["depth"] = depth
    if heads != h0:
        kwargs["num_heads"] = heads
    if patch != _TIMM_PATCH:
        kwargs["patch_size"] = patch
    if size != "giant" and mlp != _TIMM_MLP_RATIO:
        kwargs["mlp_ratio"] = mlp
    return arch, kwargs


def _refuse_unsupported(config: dict[str, Any], folder: Path) -> None:
    kind = config.get("model_type")
    if kind != "dinov2":
        raise WeightsError(
            f"{folder} holds a {kind or 'unknown'!s} model (config.json model_type) - pretrain-load hf "
            "takes DINOv2-family encoders (model_type dinov2, e.g. RAD-DINO); register other timm "
            "weights with vitmed pretrain-load file --file PATH --arch NAME"
        )
    if config.get("use_swiglu_ffn"):
        raise WeightsError(
            f"{folder} is a DINOv2 with a SwiGLU MLP (ViT-g) - vitmed converts the ViT-S/B/L "
            "layout only; register the official dinov2_vitg14 file with vitmed pretrain-load dinov2 "
            "--file PATH --arch vit_giant_patch14_dinov2"
        )
    if config.get("hidden_act", "gelu") != "gelu" or float(config.get("layer_norm_eps", 1e-6)) != 1e-6:
        raise WeightsError(
            f"{folder}: hidden_act {config.get('hidden_act')!r} / layer_norm_eps "
            f"{config.get('layer_norm_eps')} differ from timm's DINOv2 (gelu, 1e-6) - this snapshot "
            "has no timm equivalent"
        )


def read_snapshot(folder: str | Path) -> HfSnapshot:
    """Check a ``save_pretrained`` folder and name the timm model it converts to."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{folder} is not a folder - pass the save_pretrained folder (config.json + "
                           "model.safetensors) with `dir`")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise WeightsError(f"{folder} has no config.json - pass the folder save_pretrained wrote "
                           "(config.json + model.safetensors)")
    weights = next((folder / n for n in _WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        sharded = (folder / "model.safetensors.index.json").is_file()
        raise WeightsError(
            f"{folder} has no model.safetensors"
            + (" (its weights are sharded) - re-save it as one file: "
               "model.save_pretrained(DIR, max_shard_size='10GB')" if sharded else
               " - download the snapshot's model.safetensors into it")
        )
    raw = cfg_path.read_bytes()
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{cfg_path} is not valid JSON ({exc.msg}) - restore the snapshot's file") from exc
    _refuse_unsupported(config, folder)
    arch, kwargs = timm_equivalent(config)
    kwargs.update(_norm_overlay(folder))
    return HfSnapshot(folder=folder.resolve(), weights=weights.resolve(), config=config,
                      config_sha256=hashlib.sha256(raw).hexdigest(), arch=arch, model_kwargs=kwargs,
                      licence=_readme_licence(folder))


def _block_key(rest: str) -> str | None:
    """A key inside ``encoder.layer.N.`` in timm's block layout (None: joined into qkv)."""
    for old, new in (("norm1.", "norm1."), ("norm2.", "norm2."), ("mlp.fc1.", "mlp.fc1."),
                     ("mlp.fc2.", "mlp.fc2."), ("attention.output.dense.", "attn.proj."),
                     ("attention.o_proj.", "attn.proj.")):
        if rest.startswith(old):
            return new + rest[len(old):]
    if rest == "layer_scale1.lambda1":
        return "ls1.gamma"
    if rest == "layer_scale2.lambda1":
        return "ls2.gamma"
    return None


_QKV = {"query": 0, "key": 1, "value": 2, "q_proj": 0, "k_proj": 1, "v_proj": 2}


def dinov2_to_timm(state: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """A ``Dinov2Model`` state dict (``save_pretrained`` layout) in timm's ViT layout.

    Keys it does not know are kept under their own names, so the strict fit that follows
    names them instead of dropping them silently.
    """
    import torch

    if any(k.startswith("dinov2.") for k in state):  # Dinov2ForImageClassification
        state = {k[len("dinov2."):]: v for k, v in state.items() if k.startswith("dinov2.")}
    top = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], list] = {}
    for key, value in state.items():
        if key == "embeddings.mask_token":
            continue  # used only in pretraining
        if key in top:
            out[top[key]] = value
            continue
        m = _LAYER.match(key)
        if m is None:
            out[key] = value
            continue
        i, rest = int(m.group(1)), m.group(2)
        new = _block_key(rest)
        if new is not None:
            out[f"blocks.{i}.{new}"] = value
            continue
        parts = rest.split(".")  # attention.attention.query.weight / attention.q_proj.weight
        if parts[0] == "attention" and parts[-2] in _QKV:
            qkv.setdefault((i, parts[-1]), [None, None, None])[_QKV[parts[-2]]] = value
            continue
        out[key] = value
    for (i, kind), parts in qkv.items():
        if any(p is None for p in parts):
            missing = [n for n, p in zip(("query", "key", "value"), parts) if p is None]
            raise WeightsError(f"the snapshot's layer {i} lacks its attention {', '.join(missing)} {kind} "
                               "- the file is incomplete; download it again")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    return out


__all__ = ["LAYOUT", "HfSnapshot", "dinov2_to_timm", "read_snapshot", "timm_equivalent"]
