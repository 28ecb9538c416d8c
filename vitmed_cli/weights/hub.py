"""The local Hugging Face hub cache: find timm's weights there offline, download only when asked."""

from __future__ import annotations

import os
from pathlib import Path

from .._util import first_line
from ..errors import WeightsError

_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_repo_id(arch: str) -> str | None:
    """timm's Hugging Face repo for ``arch`` (e.g. ``timm/vit_base_patch16_224.augreg_in21k``)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(arch)
    except Exception:  # noqa: BLE001 - unknown names have no repo
        return None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def find_hub_weights(arch: str) -> Path | None:
    """A weights file for ``arch`` already in the local hub cache; never touches the network."""
    repo = hub_repo_id(arch)
    if not repo:
        return None
    cache = hub_cache_dir()
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        try_to_load_from_cache = None
    for filename in _HUB_FILES:
        if try_to_load_from_cache is not None:
            try:
                found = try_to_load_from_cache(repo, filename, cache_dir=str(cache))
            except Exception:  # noqa: BLE001 - a damaged cache is treated as empty
                found = None
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        # A snapshot without refs/main (copied by hand) is still a snapshot.
        folder = cache / ("models--" + repo.replace("/", "--")) / "snapshots"
        hits = sorted(folder.glob(f"*/{filename}"), key=lambda p: p.stat().st_mtime, reverse=True)
        if hits:
            return hits[0]
    return None


def download_hub_weights(arch: str) -> Path:
    """Download timm's weights for ``arch`` into the hub cache (only when the user allows network)."""
    repo = hub_repo_id(arch)
    if not repo:
        raise WeightsError(
            f"timm has no Hugging Face weights for {arch} - pass the file with `file` PATH"
        )
    from huggingface_hub import hf_hub_download

    last: Exception | None = None
    for filename in _HUB_FILES:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=str(hub_cache_dir())))
        except Exception as exc:  # noqa: BLE001
            last = exc
    raise WeightsError(
        f"cannot download {repo} ({first_line(last) if last else 'no file'}) - download "
        f"model.safetensors from https://huggingface.co/{repo} and pass it with `file` PATH"
    )
