"""Registering weights files: a ``Checkpoint`` row per file, known by its sha256.

A file is registered once per (sha256, architecture, role); registering it again
returns the existing row.  A file to register as an initialisation is first
checked against its architecture (:func:`vitmed_cli.models.check_weights`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from .. import models
from ..registry.models import Checkpoint
from .files import check_file, sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sqlalchemy.orm import Session


@dataclass(frozen=True)
class PretrainLoadResult:
    """What ``pretrain-load`` registered (or found already registered)."""

    checkpoint_id: int
    init: str
    name: str
    arch: str
    sha256: str
    n_params: int | None
    source: str
    path: str | None
    existing: bool
    image_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    others: tuple[int, ...] = ()  # other (older) checkpoints registered under the same name
    unused_name: str | None = None  # a name asked for, not applied: the file was registered already

    def note(self) -> str | None:
        """What the user should know: a name not applied, or a name that stands for several files."""
        if self.unused_name is not None:
            return (f"this file was registered before as {self.name!r} (checkpoint {self.checkpoint_id}); "
                    f"`name` {self.unused_name!r} was not applied - fine-tune with `init` {self.name}")
        if not self.others:
            return None
        newest = max((self.checkpoint_id, *self.others))
        return (f"{self.init} now names {len(self.others) + 1} registered files: `init` {self.init} uses "
                f"the newest (checkpoint {newest}); the others are "
                + ", ".join(f"{self.init}@{i}" for i in sorted(set((self.checkpoint_id, *self.others)) - {newest})))

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint_id": self.checkpoint_id,
            "init": self.init,
            "name": self.name,
            "arch": self.arch,
            "sha256": self.sha256,
            "n_params": self.n_params,
            "source": self.source,
            "path": self.path,
            "existing": self.existing,
            "image_size": self.image_size,
            "model_kwargs": dict(self.model_kwargs),
            "others": list(self.others),
        }


def register_checkpoint(
    session: "Session",
    path: str | os.PathLike,
    *,
    arch: str,
    init: str,
    source: str,
    role: str = "init",
    name: str | None = None,
    run_id: int | None = None,
    epoch: int | None = None,
    image_size: int | None = None,
    findings: list[str] | None = None,
    meta: dict[str, Any] | None = None,
    n_params: int | None = None,
    sha256: str | None = None,
) -> Checkpoint:
    """Register a weights file by sha256; idempotent on (sha256, arch, role).

    Registering a file that is already registered with the same architecture and
    role returns the existing row unchanged.  ``n_params`` is counted from the
    file's header when it is .safetensors and not given.
    """
    p = check_file(path)
    digest = sha256 or sha256_file(p)
    existing = session.scalar(
        select(Checkpoint).where(
            Checkpoint.sha256 == digest, Checkpoint.arch == arch, Checkpoint.role == role
        )
    )
    if existing is not None:
        return existing
    if n_params is None and p.suffix.lower() == ".safetensors":
        n_params = _safetensors_numel(p)
    ckpt = Checkpoint(
        name=name or init,
        init=init,
        arch=arch,
        path=str(p),
        sha256=digest,
        source=source,
        role=role,
        run_id=run_id,
        epoch=epoch,
        n_params=n_params,
        image_size=image_size,
        findings=list(findings) if findings is not None else None,
        meta=dict(meta or {}),
    )
    session.add(ckpt)
    session.flush()
    return ckpt


def _safetensors_numel(path: Path) -> int | None:
    try:
        from safetensors import safe_open

        total = 0
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                n = 1
                for dim in fh.get_slice(key).get_shape():
                    n *= int(dim)
                total += n
        return total
    except Exception:  # noqa: BLE001 - a count is nice to have, not required
        return None


def _result(ckpt: Checkpoint, existing: bool) -> PretrainLoadResult:
    return PretrainLoadResult(
        checkpoint_id=ckpt.id,
        init=ckpt.init,
        name=ckpt.name,
        arch=ckpt.arch,
        sha256=ckpt.sha256,
        n_params=ckpt.n_params,
        source=ckpt.source,
        path=ckpt.path,
        existing=existing,
        image_size=ckpt.image_size,
        model_kwargs=dict((ckpt.meta or {}).get("model_kwargs") or {}),
    )


def _find_registered(session: "Session", sha: str, arch: str) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint).where(
            Checkpoint.sha256 == sha, Checkpoint.arch == arch, Checkpoint.role == "init"
        )
    )


def _checked_meta(
    path: Path, state: dict[str, "torch.Tensor"], arch: str, model_kwargs: dict[str, Any] | None
) -> tuple[dict[str, Any], Any]:
    """Check ``state`` (read from ``path``) against ``arch``; the meta to store and the check."""
    check = models.check_weights(state, arch, model_kwargs=model_kwargs, file_label=str(path))
    meta: dict[str, Any] = {"file_name": path.name, "n_keys": check.n_keys}
    if model_kwargs:
        meta["model_kwargs"] = dict(model_kwargs)
    if check.ignored_keys:
        meta["ignored_keys"] = list(check.ignored_keys)
    if check.head_keys:
        meta["head_keys"] = list(check.head_keys)
    return meta, check


def _register_read(
    session: "Session",
    init: str,
    path: Path,
    arch: str,
    *,
    state: dict[str, "torch.Tensor"],
    sha: str,
    name: str | None,
    model_kwargs: dict[str, Any] | None,
    source: str,
    extra_meta: dict[str, Any] | None = None,
) -> PretrainLoadResult:
    """Register a file already read (``state``, ``sha``) after checking it (no-op when registered).

    ``extra_meta`` (family, licence, layout, ...) is stored beside what the check records.
    """
    found = _find_registered(session, sha, arch)
    if found is not None:
        return _result(found, existing=True)
    meta, check = _checked_meta(path, state, arch, model_kwargs)
    meta.update(extra_meta or {})
    ckpt = register_checkpoint(
        session, path, arch=arch, init=init, source=source, name=name or init,
        image_size=check.source_image_size, meta=meta, n_params=check.n_params, sha256=sha,
    )
    return _result(ckpt, existing=False)
