"""The model factory: a timm architecture, a state dict to start from, a new head.

:func:`create_model` builds the timm model (``pretrained=False``: it never
downloads), loads a given state dict with strict key checks (only the
classifier head may differ), replaces the head for the number of findings and
adapts the position embeddings to the training image size.  It returns the
model and a dict saying what was done, for the run's record.  It knows nothing
of the registry: :func:`vitmed_cli.weights.create_model_from_init` reads a
registered initialisation and hands its tensors here.

:func:`check_weights` is the same fitting on a ``meta``-device model (no memory,
no initialisation), used by ``pretrain-load`` before anything is registered.
"""

from __future__ import annotations


import contextlib
import difflib
import io
import json
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ._util import first_line
from .errors import ConfigError, WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Keys a checkpoint may lack without being the wrong architecture.
_OPTIONAL_MISSING_SUFFIXES = ("num_batches_tracked",)
_LIST_LIMIT = 8


@dataclass(frozen=True)
class WeightsCheck:
    """A weight file that fits an architecture: what it holds."""

    arch: str
    n_params: int
    n_keys: int
    source_image_size: int | None
    head_keys: tuple[str, ...]
    ignored_keys: tuple[str, ...]


def check_arch_name(arch: str) -> None:
    """Refuse an architecture timm does not know, naming close matches."""
    import timm

    if timm.is_model(arch):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(arch.split(".", 1)[0], names, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
    raise WeightsError(f"unknown timm architecture {arch!r} - {hint}")


def _build(arch: str, *, img_size: int | None = None, **kwargs: Any) -> "torch.nn.Module":
    """timm.create_model without downloading; ``img_size`` only where the family takes it."""
    import timm

    check_arch_name(arch)
    try:
        if img_size is not None:
            try:
                return timm.create_model(arch, pretrained=False, img_size=img_size, **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
        return timm.create_model(arch, pretrained=False, **kwargs)
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - bad overrides surface in many types
        shown = {k: v for k, v in kwargs.items() if k not in ("num_classes", "in_chans")}
        raise WeightsError(
            f"cannot build {arch} with {shown or 'its defaults'}"
            f"{f' at {img_size} px' if img_size else ''}: {first_line(exc)}"
            " - check `arch` and `model_kwargs`"
        ) from exc


def _classifier_names(model: Any) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or "head"
    return tuple(names) if isinstance(names, (list, tuple)) else (names,)


def _is_head(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def _filter_fn(model: Any) -> Callable | None:
    """The family's own converter (timm's ``checkpoint_filter_fn``: DINOv2 files, pos-embed resampling)."""
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    return fn if callable(fn) else None


def _grid_of(n_tokens: int, prefixes: tuple[int, ...]) -> int | None:
    for p in prefixes:
        n = n_tokens - p
        if n > 0 and math.isqrt(n) ** 2 == n:
            return math.isqrt(n)
    return None


def _family(keys: list[str]) -> str | None:
    ks = set(keys)
    if any(k.endswith("ls1.gamma") for k in ks) and "cls_token" in ks:
        return "a DINOv2-style ViT with LayerScale"
    if any(".attn.qkv." in k for k in ks):
        return "a ViT"
    if any(k.startswith("layer1.") for k in ks):
        return "a ResNet"
    if any(k.startswith("stages.") for k in ks):
        return "a CNN with stages (ConvNeXt/EfficientNet-style)"
    return None


def _listing(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = f" (+{len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
    return f"{label} ({len(keys)}): {shown}{more}"


def _raw_grid(raw_pos: "torch.Tensor | None", model: Any) -> int | None:
    if raw_pos is None or raw_pos.ndim != 3:
        return None
    n_prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    return _grid_of(int(raw_pos.shape[1]), (n_prefix, 0, 1))


def _converted(sd: dict, model: Any, target: dict, arch: str, file_label: str) -> dict:
    """``sd`` in the model's layout, through the family's own converter (timm's checkpoint_filter_fn)."""
    # The ViT converter would silently resample a different patch size; that is another model.
    pe = "patch_embed.proj.weight"
    if pe in sd and pe in target and sd[pe].ndim == 4 and sd[pe].shape[-2:] != target[pe].shape[-2:]:
        raise WeightsError(
            f"{file_label} has {tuple(sd[pe].shape[-2:])} patches but {arch} uses "
            f"{tuple(target[pe].shape[-2:])} - use the matching `arch`, or set the patch size in "
            f"`model_kwargs` ({{\"patch_size\": {int(sd[pe].shape[-1])}}})"
        )
    fn = _filter_fn(model)
    if fn is None:
        return sd
    try:
        # timm's converters print notes (e.g. a DINOv3 file's all-zero qkv biases that the
        # model has no parameter for); the library never prints
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(sd, model)
    except Exception as exc:  # noqa: BLE001 - a converter failing means the file does not fit
        fam = _family(list(sd))
        raise WeightsError(
            f"{file_label} does not fit {arch}{f' (it looks like {fam})' if fam else ''}: "
            f"{first_line(exc)} - use the matching `arch` (and `model_kwargs` for a resized model)"
        ) from exc


def _adapt_first_conv(sd: dict, model: Any, target: dict) -> str | None:
    """A pretrained RGB first convolution summed or repeated to the model's input channels."""
    from timm.models import adapt_input_conv

    first = getattr(model, "pretrained_cfg", {}).get("first_conv")
    key = f"{first}.weight" if isinstance(first, str) else None
    if not (key and key in sd and key in target and sd[key].ndim == 4):
        return None
    have, want = int(sd[key].shape[1]), int(target[key].shape[1])
    if have == want:
        return None
    sd[key] = adapt_input_conv(want, sd[key])
    return f"adapted {have}->{want}"


def _refuse_misfit(sd: dict, target: dict, names: tuple[str, ...], drop_head: bool, raw_keys: list[str],
                   arch: str, file_label: str) -> None:
    """Missing, unexpected or mis-shaped keys (the head aside) are an error listing them."""
    missing = [
        k for k in target
        if k not in sd and not (drop_head and _is_head(k, names)) and not k.endswith(_OPTIONAL_MISSING_SUFFIXES)
    ]
    # listed by name: the order of a file's keys depends on its format
    unexpected = sorted(k for k in sd if k not in target)
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}"
        for k in sorted(sd)
        if k in target and tuple(sd[k].shape) != tuple(target[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    fam = _family(raw_keys)
    parts = [_listing(label, keys) for label, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
             if keys]
    raise WeightsError(
        f"{file_label} does not fit {arch}{f' (it looks like {fam})' if fam else ''}: "
        + "; ".join(parts)
        + " - use the matching `arch` (and `model_kwargs` for a resized model); nothing was loaded"
    )


def _storage(t: Any) -> int | None:
    try:
        return int(t.untyped_storage().data_ptr()) or None
    except Exception:  # noqa: BLE001 - meta tensors have no storage
        return None


def patch_size_of(model: Any) -> int | None:
    """A ViT's patch size (square), None for architectures without patches (ConvNeXt, ResNet)."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        return None
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


def refuse_misaligned_size(model: Any, image_size: int, arch: str) -> None:
    """A ViT at a size its patch does not divide would silently drop the last rows and columns."""
    patch = patch_size_of(model)
    if patch is None or image_size % patch == 0:
        return
    lower = (image_size // patch) * patch
    nearest = [s for s in (lower, lower + patch) if s >= patch]
    raise ConfigError(
        f"`image_size` {image_size} is not a multiple of the patch size {patch} of {arch} (the last "
        f"{image_size - lower} pixel rows and columns would be dropped) - use "
        + " or ".join(str(s) for s in nearest)
    )


def check_image_size(arch: str, image_size: int, **model_kwargs: Any) -> None:
    """Refuse an ``image_size`` the architecture's patch size does not divide (built on ``meta``)."""
    import torch

    kwargs = dict(model_kwargs)
    kwargs.pop("img_size", None)
    with torch.device("meta"):
        model = _build(arch, img_size=image_size, num_classes=0, **kwargs)
    refuse_misaligned_size(model, image_size, arch)


def _pos_embed_record(raw_pos: Any, model: Any) -> str | None:
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    old = _raw_grid(raw_pos, model)
    if grid is None or old is None:
        return None
    new = tuple(int(g) for g in grid)
    return f"kept {new[0]}x{new[1]}" if (old, old) == new else f"interpolated {old}x{old} -> {new[0]}x{new[1]}"


def fit_state_dict(
    state_dict: dict[str, "torch.Tensor"],
    model: "torch.nn.Module",
    *,
    drop_head: bool = True,
    file_label: str = "the weights file",
    arch: str | None = None,
) -> tuple[dict[str, "torch.Tensor"], dict[str, Any]]:
    """Convert ``state_dict`` to ``model``'s layout and check it strictly.

    Returns the dict to load and a record (keys loaded, head, position
    embeddings, input channels).  Missing, unexpected or mis-shaped keys other
    than the classifier head raise :class:`WeightsError` listing them.
    """
    arch = arch or getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    raw_keys = list(state_dict)
    target = model.state_dict()
    names = _classifier_names(model)
    sd = _converted(dict(state_dict), model, target, arch, file_label)
    # a key the converter renamed (DINOv3's storage_tokens -> reg_token) or split (qkv.bias ->
    # q_bias, v_bias) is used, not ignored: its storage lives on in the converted dict
    used = {_storage(v) for v in sd.values()}
    ignored = sorted(k for k in raw_keys if k not in sd and not _is_head(k, names)
                     and _storage(state_dict[k]) not in used)
    head_keys = sorted(k for k in sd if _is_head(k, names))
    if drop_head:
        for k in head_keys:
            sd.pop(k)
    info: dict[str, Any] = {}
    adapted = _adapt_first_conv(sd, model, target)
    if adapted:
        info["in_chans"] = adapted
    _refuse_misfit(sd, target, names, drop_head, raw_keys, arch, file_label)
    info["loaded_keys"] = len(sd)
    info["head"] = "new" if drop_head or not head_keys else "loaded"
    if head_keys and drop_head:
        info["head_dropped"] = head_keys
    if ignored:
        info["ignored_keys"] = ignored
    pos = _pos_embed_record(state_dict.get("pos_embed"), model)
    if pos:
        info["pos_embed"] = pos
    elif getattr(model, "pos_embed", None) is None and getattr(model, "rope", None) is not None:
        info["pos_embed"] = "none: rotary (RoPE) positions, nothing to interpolate"
    return sd, info


def check_weights(
    state_dict: dict[str, "torch.Tensor"],
    arch: str,
    *,
    model_kwargs: dict[str, Any] | None = None,
    file_label: str = "the weights file",
) -> WeightsCheck:
    """Check that ``state_dict`` loads into ``arch`` (head aside) without building real tensors."""
    import torch

    kwargs = dict(model_kwargs or {})
    img_size = kwargs.pop("img_size", None)
    pe = state_dict.get("patch_embed.proj.weight")
    pos = state_dict.get("pos_embed")
    if img_size is None and pe is not None and pe.ndim == 4 and pos is not None and pos.ndim == 3:
        # Check at the file's own resolution: the patch grid its pos_embed was trained for.
        grid = _grid_of(int(pos.shape[1]), (1, 0, 5, 4))
        if grid:
            img_size = grid * int(pe.shape[-1])
    kwargs["num_classes"] = 0
    with torch.device("meta"):
        model = _build(arch, img_size=img_size, **kwargs)
    sd, info = fit_state_dict(state_dict, model, drop_head=True, file_label=file_label, arch=arch)
    size = None
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if grid is not None and patch is not None:
        size = int(grid[0]) * int(patch[0])
    if size is None:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        input_size = cfg.get("input_size")
        size = int(input_size[-1]) if input_size else None
    n_params = sum(p.numel() for p in model.parameters())
    return WeightsCheck(
        arch=arch,
        n_params=int(n_params),
        n_keys=len(sd),
        source_image_size=size,
        head_keys=tuple(info.get("head_dropped", ())),
        ignored_keys=tuple(info.get("ignored_keys", ())),
    )


def create_model(
    arch: str,
    num_findings: int,
    image_size: int,
    state_dict: dict[str, "torch.Tensor"] | None = None,
    *,
    drop_head: bool = True,
    in_chans: int = 3,
    file_label: str = "the weights file",
    **model_kwargs: Any,
) -> tuple["torch.nn.Module", dict[str, Any]]:
    """Build ``arch`` for ``num_findings`` outputs at ``image_size`` px, starting from ``state_dict``.

    ``model_kwargs`` (e.g. ``depth=2, embed_dim=64, num_heads=2, patch_size=8``)
    pass to timm.  Without ``state_dict`` the model keeps timm's random
    initialisation; with one, every key but the classifier head (``drop_head``)
    must fit (see :func:`fit_state_dict`).
    """
    if num_findings < 1:
        raise WeightsError(f"a model needs at least one finding to predict, got {num_findings}")
    kwargs = dict(model_kwargs)
    kwargs.pop("img_size", None)
    # (a patch that does not divide image_size is refused when a run starts, check_image_size;
    # runs trained before that rule still load for predict)
    model = _build(arch, img_size=image_size, num_classes=num_findings, in_chans=in_chans, **kwargs)
    info: dict[str, Any] = {
        "arch": arch,
        "image_size": image_size,
        "in_chans": in_chans,
        "num_findings": num_findings,
        "model_kwargs": kwargs,
        "loaded_keys": 0,
        "head": "new",
        "pos_embed": "new" if getattr(model, "pos_embed", None) is not None else None,
    }
    if state_dict is None:
        return model, info
    sd, fit = fit_state_dict(state_dict, model, drop_head=drop_head, file_label=file_label, arch=arch)
    model.load_state_dict(sd, strict=False)
    if "in_chans" in fit:
        fit["in_chans_adapted"] = fit.pop("in_chans")
    info.update(fit)
    return model, info


def parse_model_kwargs(value: dict[str, Any] | str | None) -> dict[str, Any]:
    """``model_kwargs`` (a JSON object, or already a dict) as a dict; a clear error otherwise."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"`model_kwargs` is not valid JSON ({exc.msg}) - write an object, e.g. "
                '\'{"depth": 2, "embed_dim": 64, "num_heads": 2, "patch_size": 8}\''
            ) from exc
    if not isinstance(value, dict):
        raise ConfigError(
            '`model_kwargs` must be a JSON object, e.g. \'{"depth": 2, "embed_dim": 64}\''
        )
    return dict(value)


__all__ = [
    "WeightsCheck", "check_arch_name", "check_image_size", "check_weights", "create_model",
    "fit_state_dict", "parse_model_kwargs", "patch_size_of", "refuse_misaligned_size",
]
