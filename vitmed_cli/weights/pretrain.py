"""``pretrain-load``: register a study's starting weights from a local file, the Hugging Face
cache, or an earlier run, after reading the file once and checking it against its architecture."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import models
from ..errors import WeightsError
from ..events import Listener, detail
from ..registry.models import Checkpoint
from ..registry.names import check_name
from .files import check_file, read_weights
from .hub import download_hub_weights, find_hub_weights, hub_cache_dir
from .inits import (
    _OFFICIAL,
    DEFAULT_ARCH,
    _missing_weights_error,
    _parse_id,
    _require_file,
    _run_best,
    registered_under,
)
from .registry import PretrainLoadResult, _checked_meta, _find_registered, _result, register_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from ..registry.db import Registry


def _register_file(
    registry: "Registry",
    init: str,
    path: Path,
    arch: str,
    *,
    name: str | None,
    model_kwargs: dict[str, Any] | None,
    source: str,
    on_event: Listener | None = None,
) -> PretrainLoadResult:
    """Read ``path`` once, check it against ``arch`` and register it (no-op when already registered).

    Read and checked outside any transaction: a ViT-B file takes seconds to read.
    """
    detail(on_event, f"reading and hashing {path.name}")
    state, sha = read_weights(path)
    with registry.session() as session:
        found = _find_registered(session, sha, arch)
        if found is not None:
            return _result(found, existing=True)
    detail(on_event, f"checking {path.name} against {arch}")
    meta, check = _checked_meta(path, state, arch, model_kwargs)
    del state
    with registry.session() as session:
        found = _find_registered(session, sha, arch)  # registered meanwhile by another process
        if found is not None:
            return _result(found, existing=True)
        ckpt = register_checkpoint(
            session, path, arch=arch, init=init, source=source, name=name or init,
            image_size=check.source_image_size, meta=meta, n_params=check.n_params, sha256=sha,
        )
        return _result(ckpt, existing=False)


def pretrain_load(
    registry: "Registry",
    init: str,
    *,
    file: str | os.PathLike | None = None,
    arch: str | None = None,
    name: str | None = None,
    model_kwargs: dict[str, Any] | str | None = None,
    allow_network: bool = False,
    on_event: Listener | None = None,
) -> PretrainLoadResult:
    """Register the starting weights ``init`` (dinov2, imagenet, file, run:<id>) after checking them.

    The file is read once without running code, hashed, loaded into ``arch`` with
    strict key checks (only the classifier head may differ), then registered in
    one transaction.  The same file again returns the existing checkpoint.
    """
    init = (init or "").strip()
    kwargs = models.parse_model_kwargs(model_kwargs)
    if name is not None:
        check_name(name, Checkpoint.name, Checkpoint.init, param="name", what="initialisation")

    if init.startswith("run:"):
        return _register_run(registry, _parse_id(init, "run:"), name or init)

    if init == "random":
        raise WeightsError(
            "random needs no weights file - use `init` random when fine-tuning; pretrain-load "
            "takes dinov2, imagenet, file or run:<id>"
        )
    if init not in ("dinov2", "imagenet", "file"):
        raise WeightsError(
            f"unknown initialisation {init!r} for pretrain-load - use one of: dinov2, imagenet, "
            "file (any timm `arch`), run:<id>"
        )
    if init == "file":
        if not arch:
            raise WeightsError(
                "pretrain-load file needs the architecture - add `arch` TIMM_NAME, e.g. `arch` resnet50d"
            )
        label = name or arch
        init_name = label
    else:
        arch = arch or DEFAULT_ARCH[init]
        init_name = init
        label = name or init
    models.check_arch_name(arch)

    source = "file"
    if file is None:
        found = find_hub_weights(arch)
        if found is None and allow_network:
            found = download_hub_weights(arch)
        if found is None:
            _refuse_registered_again(registry, init_name)
            if init in _OFFICIAL:
                raise _missing_weights_error(init, arch)
            raise WeightsError(
                f"no weights for {arch} in the Hugging Face cache ({hub_cache_dir()}) - pass the "
                f"file: vitmed pretrain-load file --file PATH --arch {arch}"
            )
        path, source = found.resolve(), "hub-cache"
    else:
        path = check_file(file)
    result = _register_file(registry, init_name, path, arch, name=label, model_kwargs=kwargs,
                            source=source, on_event=on_event)
    with registry.session(readonly=True) as session:
        others = tuple(c.id for c in registered_under(session, result.init) if c.id != result.checkpoint_id)
    return dataclasses.replace(result, others=others)


def _register_run(registry: "Registry", run_id: int, label: str) -> PretrainLoadResult:
    """A run's best checkpoint as an initialisation (the study's in-domain supervised init)."""
    with registry.session() as session:
        best = _run_best(session, run_id)
        _require_file(best)
        found = _find_registered(session, best.sha256, best.arch)
        if found is not None:
            return _result(found, existing=True)
        ckpt = Checkpoint(
            name=label, init=label, arch=best.arch, path=best.path, sha256=best.sha256,
            source="run", role="init", run_id=run_id, epoch=best.epoch,
            n_params=best.n_params, image_size=best.image_size, findings=best.findings,
            meta={**(best.meta or {}), "from_checkpoint": best.id, "from_run": run_id},
        )
        session.add(ckpt)
        session.flush()
        return _result(ckpt, existing=False)


def _refuse_registered_again(registry: "Registry", init: str) -> None:
    """No file given and none in the cache, but the name is registered already: say so."""
    with registry.session(readonly=True) as session:
        rows = registered_under(session, init)
    if rows:
        listed = ", ".join(f"{c.id} ({c.arch}, sha256 {c.sha256[:12]})" for c in rows)
        raise WeightsError(
            f"{init} weights are already registered as checkpoint(s) {listed}, newest first - fine-tune "
            f"with `init` {init} (the newest) or {init}@ID; to register another file give `file`"
        )
