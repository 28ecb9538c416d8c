"""``pretrain-load``: register a study's starting weights from a local file, the Hugging Face
cache, or an earlier run, after reading the file once and checking it against its architecture."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import models
from ..errors import WeightsError
from ..events import Listener, detail
from ..registry.models import Checkpoint
from ..registry.names import check_name
from . import hf
from .families import DINOV3, DINOV3_LICENCE, HF, TIMM, dinov3_arch
from .files import check_file, read_weights
from .hub import download_hub_weights, find_hub_weights, hub_cache_dir
from .inits import (
    _OFFICIAL,
    DEFAULT_ARCH,
    TIMM_PREFIX,
    _parse_id,
    _require_file,
    _run_best,
    missing_timm_error,
    registered_under,
    study_meta,
)
from .registry import PretrainLoadResult, _checked_meta, _find_registered, _result, register_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from ..registry.db import Registry


def _register_file(
    registry: "Registry",
    init: str,
    path: Path,
    arch: str | None,
    *,
    name: str | None,
    model_kwargs: dict[str, Any] | None,
    source: str,
    on_event: Listener | None = None,
    extra_meta: dict[str, Any] | None = None,
    infer_arch: Callable[[dict], str | None] | None = None,
    convert: Callable[[dict], dict] | None = None,
) -> PretrainLoadResult:
    """Read ``path`` once, check it against ``arch`` and register it (no-op when already registered).

    ``infer_arch`` names the architecture from the tensors when ``arch`` is None (DINOv3);
    ``convert`` turns a file in another layout into timm's before the check (the file
    registered and hashed stays the publisher's).  Read and checked outside any
    transaction: a ViT-B file takes seconds to read.
    """
    detail(on_event, f"reading and hashing {path.name}")
    state, sha = read_weights(path)
    if arch is None:
        arch = infer_arch(state) if infer_arch is not None else None
        if arch is None:
            raise WeightsError(
                f"cannot tell which model {path.name} holds - add `arch`, e.g. "
                "vit_base_patch16_dinov3.lvd1689m or convnext_base.dinov3_lvd1689m (and `model_kwargs` "
                "for a resized one)"
            )
    models.check_arch_name(arch)
    with registry.session() as session:
        found = _find_registered(session, sha, arch)
        if found is not None:
            return _result(found, existing=True)
    detail(on_event, f"checking {path.name} against {arch}")
    if convert is not None:
        state = convert(state)
    meta, check = _checked_meta(path, state, arch, model_kwargs)
    meta.update(extra_meta or {})
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


_KINDS = "dinov2, imagenet, dinov3, hf, timm:NAME, file (any timm `arch`) or run:<id>"


def pretrain_load(
    registry: "Registry",
    init: str,
    *,
    file: str | os.PathLike | None = None,
    arch: str | None = None,
    name: str | None = None,
    model_kwargs: dict[str, Any] | str | None = None,
    allow_network: bool = False,
    dir: str | os.PathLike | None = None,  # noqa: A002 - the CLI's --dir
    on_event: Listener | None = None,
) -> PretrainLoadResult:
    """Register the starting weights ``init`` after checking them.

    ``init`` is dinov2, imagenet, dinov3 (an official DINOv3 release file: ViT or ConvNeXt),
    hf (a transformers ``save_pretrained`` folder, ``dir``), timm:NAME (timm's weights for
    NAME), file (any timm ``arch``) or run:<id>.  The file is read once without running
    code, hashed, loaded into ``arch`` with strict key checks (only the classifier head may
    differ), then registered in one transaction with its family and licence note.  The
    same file again returns the existing checkpoint.
    """
    init = (init or "").strip()
    kwargs = models.parse_model_kwargs(model_kwargs)
    if name is not None:
        check_name(name, Checkpoint.name, Checkpoint.init, param="name", what="initialisation")

    if init.startswith("run:"):
        return _register_run(registry, _parse_id(init, "run:"), name or init)
    if init == "random":
        raise WeightsError(
            f"random needs no weights file - use `init` random when fine-tuning; pretrain-load takes {_KINDS}"
        )
    if dir is not None and init != "hf":
        raise WeightsError(f"`dir` is for pretrain-load hf (a save_pretrained folder), not {init} - use `file`")
    if init == "hf":
        result = _register_hf(registry, dir, file, name, kwargs, on_event)
    elif init == "dinov3":
        result = _register_dinov3(registry, file, arch, name, kwargs, on_event)
    elif init in ("dinov2", "imagenet", "file") or init.startswith(TIMM_PREFIX):
        result = _register_timm(registry, init, file, arch, name, kwargs, allow_network, on_event)
    else:
        raise WeightsError(f"unknown initialisation {init!r} for pretrain-load - use one of: {_KINDS}")
    with registry.session(readonly=True) as session:
        others = tuple(c.id for c in registered_under(session, result.init) if c.id != result.checkpoint_id)
    unused = name if result.existing and name is not None and name != result.name else None
    return dataclasses.replace(result, others=others, unused_name=unused)


def _register_timm(registry: "Registry", init: str, file, arch: str | None, name: str | None,
                   kwargs: dict[str, Any], allow_network: bool, on_event) -> PretrainLoadResult:
    """dinov2, imagenet, timm:NAME or file --arch: a timm-layout file, or timm's in the HF cache."""
    if init == "file":
        if not arch:
            raise WeightsError(
                "pretrain-load file needs the architecture - add `arch` TIMM_NAME, e.g. `arch` resnet50d"
            )
        label = name or arch
        init_name = label
        extra: dict[str, Any] = {"family": TIMM}
    elif init.startswith(TIMM_PREFIX):
        timm_name = init[len(TIMM_PREFIX):]
        models.check_arch_name(timm_name)
        if arch and arch != timm_name:
            raise WeightsError(f"{init} names its architecture already - leave `arch` out")
        arch, init_name, label = timm_name, init, name or init
        extra = study_meta(init, arch)
    else:
        arch = arch or DEFAULT_ARCH[init]
        init_name = init
        label = name or init
        extra = study_meta(init, arch)
    models.check_arch_name(arch)

    source = "file"
    if file is None:
        found = find_hub_weights(arch)
        if found is None and allow_network:
            found = download_hub_weights(arch)
        if found is None:
            _refuse_registered_again(registry, init_name)
            if init in _OFFICIAL:
                info = _OFFICIAL[init]
                raise WeightsError(
                    f"no `file` given and no {info['label']} weights for {arch} in the Hugging Face cache "
                    f"({hub_cache_dir()}) - download {info['file']} from {info['where']} and pass it with "
                    "`file`, or let vitmed download it into the cache with `allow_network`"
                )
            if init.startswith(TIMM_PREFIX):
                raise missing_timm_error(init)
            raise WeightsError(
                f"no weights for {arch} in the Hugging Face cache ({hub_cache_dir()}) - pass the "
                f"file: vitmed pretrain-load file --file PATH --arch {arch}"
            )
        path, source = found.resolve(), "hub-cache"
    else:
        path = check_file(file)
    return _register_file(registry, init_name, path, arch, name=label, model_kwargs=kwargs,
                          source=source, on_event=on_event, extra_meta=extra)


def _register_dinov3(registry: "Registry", file, arch: str | None, name: str | None,
                     kwargs: dict[str, Any], on_event) -> PretrainLoadResult:
    """An official DINOv3 release file (ViT with storage tokens, RoPE and LayerScale, or ConvNeXt),
    converted by timm's own checkpoint filter; the architecture is read from the file."""
    if file is None:
        raise WeightsError(
            "pretrain-load dinov3 needs the release file - download e.g. "
            "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth (Meta's DINOv3 release, "
            "https://ai.meta.com/dinov3/) and pass it with `file`"
        )
    # a --name is the init's name too, so a DINOv3 ViT and ConvNeXt can be told apart
    return _register_file(registry, name or "dinov3", check_file(file), arch, name=name or "dinov3",
                          model_kwargs=kwargs, source="file", on_event=on_event,
                          extra_meta={"family": DINOV3, "licence": DINOV3_LICENCE},
                          infer_arch=dinov3_arch)


def _register_hf(registry: "Registry", folder, file, name: str | None, kwargs: dict[str, Any],
                 on_event) -> PretrainLoadResult:
    """A transformers DINOv2-family snapshot (RAD-DINO, ...) as the equivalent timm ViT."""
    if folder is None:
        raise WeightsError(
            "pretrain-load hf needs the snapshot folder (config.json + model.safetensors) - pass it with `dir`"
            + (" (not `file`)" if file is not None else "")
        )
    snap = hf.read_snapshot(folder)
    label = name or snap.default_name
    check_name(label, Checkpoint.name, Checkpoint.init, param="name", what="initialisation")
    extra: dict[str, Any] = {"family": HF, "layout": hf.LAYOUT, "hf_dir": str(snap.folder),
                             "hf_config_sha256": snap.config_sha256,
                             "hf_model_type": snap.config.get("model_type")}
    if snap.licence:
        extra["licence"] = snap.licence
    return _register_file(registry, label, snap.weights, snap.arch, name=label,
                          model_kwargs={**snap.model_kwargs, **kwargs}, source="file",
                          on_event=on_event, extra_meta=extra, convert=hf.dinov2_to_timm)


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
