"""Initialisations by name: resolve an ``init`` (random, dinov2, imagenet, run:<id>, ckpt:<id>,
a registered name) to an :class:`InitSpec`, and load it verified against its sha256.

The study's initialisations are ``random``, ``dinov2`` (self-supervised DINOv2),
``imagenet`` (supervised ImageNet-21k) and a checkpoint of an earlier vitmed run
(``run:<id>``, e.g. a model fine-tuned on MIMIC-CXR).  Every registered file is
known by its sha256, so a run records exactly which weights it started from,
and :func:`load_init_state` refuses a file whose bytes changed since.

Architecture overrides (``model_kwargs`` such as ``{"depth": 2, "embed_dim": 48}``)
registered with a file are kept in ``Checkpoint.meta["model_kwargs"]`` and applied
when the model is built (:func:`create_model_from_init`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from .. import models
from ..errors import WeightsError
from ..registry.models import Checkpoint, Run
from . import hf
from .families import DINOV2, DINOV2_LICENCE, TIMM, timm_licence
from .files import read_weights, sha256_cached
from .hub import find_hub_weights, hub_cache_dir, hub_repo_id
from .registry import _register_read

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sqlalchemy.orm import Session

STUDY_INITS = ("random", "dinov2", "imagenet")

DEFAULT_ARCH = {
    "random": "vit_base_patch16_224",
    "dinov2": "vit_base_patch14_dinov2.lvd142m",
    "imagenet": "vit_base_patch16_224.augreg_in21k",
}

# Where to get the study's files, and how the error names them.
_OFFICIAL = {
    "dinov2": {
        "label": "DINOv2",
        "file": "dinov2_vitb14_pretrain.pth",
        "where": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
    },
    "imagenet": {
        "label": "ImageNet-21k",
        "file": "model.safetensors",
        "where": "the Hugging Face repo timm/vit_base_patch16_224.augreg_in21k "
        "(https://huggingface.co/timm/vit_base_patch16_224.augreg_in21k/resolve/main/model.safetensors)",
    },
}

VALID_INIT_HELP = ("random, dinov2, imagenet, timm:NAME (timm weights in the Hugging Face cache), "
                   "run:<id>, ckpt:<id>, a registered checkpoint name (dinov3, an hf snapshot, ...), or "
                   "NAME@<checkpoint id> for one of several files registered under a name")
TIMM_PREFIX = "timm:"


def study_meta(init: str, arch: str) -> dict[str, str]:
    """The family and licence note recorded with a dinov2 / imagenet / timm:NAME registration."""
    if init == "dinov2":
        return {"family": DINOV2, "licence": DINOV2_LICENCE}
    licence = timm_licence(arch)
    return {"family": TIMM, **({"licence": licence} if licence else {})}


def missing_timm_error(init: str) -> WeightsError:
    """``timm:NAME`` with no file registered and none in the cache: name the file to supply."""
    name = init[len(TIMM_PREFIX):]
    repo = hub_repo_id(name)
    if not repo:
        return WeightsError(
            f"timm has no released weights for {name} - register a file for it: vitmed pretrain-load "
            f"file --file PATH --arch {name}"
        )
    return WeightsError(
        f"no weights for {init} in the Hugging Face cache ({hub_cache_dir()}) - supply model.safetensors "
        f"of https://huggingface.co/{repo}: vitmed pretrain-load {init} --file model.safetensors, or let "
        f"vitmed download it: vitmed pretrain-load {init} --allow-network"
    )


@dataclass(frozen=True)
class InitSpec:
    """Where a model's starting weights come from (``checkpoint_id`` None = random)."""

    name: str
    arch: str
    checkpoint_id: int | None
    path: str | None
    sha256: str | None
    source_image_size: int | None
    drop_head: bool
    model_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    findings: tuple[str, ...] | None = None
    others: tuple[int, ...] = ()  # older checkpoints registered under the same name
    layout: str | None = None  # a file in another layout, converted when loaded (hf.LAYOUT)

    def choice_note(self) -> str | None:
        """A warning when the name stands for several files: which one is used, how to pick another."""
        if not self.others:
            return None
        return (f"{self.name} has {len(self.others) + 1} registered files: using the newest, checkpoint "
                f"{self.checkpoint_id} (sha256 {(self.sha256 or '')[:12]}); choose another with `init` "
                + " or ".join(f"{self.name}@{i}" for i in self.others))


def _spec_from(ckpt: Checkpoint, name: str | None = None, others: tuple[int, ...] = ()) -> InitSpec:
    meta = ckpt.meta or {}
    return InitSpec(
        name=name or ckpt.init,
        arch=ckpt.arch,
        checkpoint_id=ckpt.id,
        path=ckpt.path,
        sha256=ckpt.sha256,
        source_image_size=ckpt.image_size,
        drop_head=True,
        model_kwargs=dict(meta.get("model_kwargs") or {}),
        findings=tuple(ckpt.findings) if ckpt.findings else None,
        others=others,
        layout=meta.get("layout"),
    )


def _base_arch(arch: str) -> str:
    return arch.split(".", 1)[0]


def _missing_weights_error(init: str, arch: str) -> WeightsError:
    info = _OFFICIAL[init]
    if arch == DEFAULT_ARCH[init]:
        return WeightsError(
            f"no {info['label']} weights registered - download {info['file']} from {info['where']} "
            f"and run: vitmed pretrain-load {init} --file {info['file']}"
        )
    repo = hub_repo_id(arch)
    where = f"https://huggingface.co/{repo} (model.safetensors)" if repo else "its publisher"
    return WeightsError(
        f"no {info['label']} weights registered for {arch} - download them from {where} "
        f"and run: vitmed pretrain-load {init} --file FILE --arch {arch}"
    )


def _require_file(ckpt: Checkpoint) -> None:
    if ckpt.path and not Path(ckpt.path).is_file():
        raise WeightsError(
            f"checkpoint {ckpt.id} ({ckpt.name}) points at {ckpt.path}, which no longer exists - "
            f"restore the file or register it again with vitmed pretrain-load"
        )


def _run_best(session: "Session", run_id: int) -> Checkpoint:
    run = session.get(Run, run_id)
    if run is None:
        raise WeightsError(f"no run {run_id} in the registry - see vitmed runs list")
    best = session.scalar(
        select(Checkpoint)
        .where(Checkpoint.run_id == run_id, Checkpoint.role == "best")
        .order_by(Checkpoint.id.desc())
    )
    if best is None:
        raise WeightsError(
            f"run {run_id} has no best checkpoint yet (status {run.status}) - let it finish, "
            "or choose another run (vitmed runs list)"
        )
    return best


def _parse_id(init: str, prefix: str) -> int:
    raw = init[len(prefix):]
    if not raw.isdigit():
        raise WeightsError(
            f"bad initialisation {init!r} - write {prefix}<id> with a number, e.g. {prefix}3"
        )
    return int(raw)


def resolve_init(
    session: "Session",
    init: str,
    arch: str | None = None,
    *,
    use_hub_cache: bool = True,
) -> InitSpec:
    """Turn an ``init`` value into an :class:`InitSpec` (newest registered weights).

    ``dinov2``/``imagenet`` with nothing registered fall back to the local hub
    cache (registered with source ``hub-cache``); otherwise :class:`WeightsError`
    names the file to get and the ``vitmed pretrain-load`` command.
    """
    init = (init or "").strip()
    if init == "random":
        return InitSpec("random", arch or DEFAULT_ARCH["random"], None, None, None, None, False)

    if init.startswith("run:"):
        best = _run_best(session, _parse_id(init, "run:"))
        _check_arch(best, arch, init)
        _require_file(best)
        return _spec_from(best, name=init)

    if "@" in init:
        return _resolve_addressed(session, init, arch)

    if init.startswith(TIMM_PREFIX):
        return _resolve_timm(session, init, arch, use_hub_cache)

    if init.startswith("ckpt:"):
        ckpt = session.get(Checkpoint, _parse_id(init, "ckpt:"))
        if ckpt is None:
            raise WeightsError(f"no checkpoint {init[5:]} in the registry - see vitmed checkpoints list")
        _check_arch(ckpt, arch, init)
        _require_file(ckpt)
        return _spec_from(ckpt)

    if init in ("dinov2", "imagenet"):
        rows = session.scalars(
            select(Checkpoint)
            .where(Checkpoint.init == init, Checkpoint.role == "init")
            .order_by(Checkpoint.id.desc())
        ).all()
        if arch:
            rows = [r for r in rows if r.arch == arch or _base_arch(r.arch) == _base_arch(arch)]
        if rows:
            _require_file(rows[0])
            return _spec_from(rows[0], others=tuple(r.id for r in rows[1:]))
        target = arch or DEFAULT_ARCH[init]
        if use_hub_cache:
            found = find_hub_weights(target)
            if found is not None:
                state, sha = read_weights(found)
                result = _register_read(session, init, found.resolve(), target, state=state, sha=sha,
                                        name=None, model_kwargs=None, source="hub-cache",
                                        extra_meta=study_meta(init, target))
                return _spec_from(session.get(Checkpoint, result.checkpoint_id))
        raise _missing_weights_error(init, target)

    if init:
        rows = session.scalars(
            select(Checkpoint)
            .where((Checkpoint.init == init) | (Checkpoint.name == init), Checkpoint.role == "init")
            .order_by(Checkpoint.id.desc())
        ).all()
        if rows:
            _check_arch(rows[0], arch, init)
            _require_file(rows[0])
            return _spec_from(rows[0], others=tuple(r.id for r in rows[1:]))

    names = sorted(
        set(session.scalars(select(Checkpoint.init).where(Checkpoint.role == "init")).all())
        - set(STUDY_INITS)
    )
    extra = f" (registered: {', '.join(names)})" if names else ""
    raise WeightsError(f"unknown initialisation {init!r} - use one of: {VALID_INIT_HELP}{extra}")


def _resolve_timm(session: "Session", init: str, arch: str | None, use_hub_cache: bool) -> InitSpec:
    """``timm:NAME``: registered already, else found in the local Hugging Face cache (offline)."""
    name = init[len(TIMM_PREFIX):]
    models.check_arch_name(name)
    rows = registered_under(session, init)
    if rows:
        _check_arch(rows[0], arch, init)
        _require_file(rows[0])
        return _spec_from(rows[0], others=tuple(r.id for r in rows[1:]))
    found = find_hub_weights(name) if use_hub_cache else None
    if found is None:
        raise missing_timm_error(init)
    if arch and _base_arch(arch) != _base_arch(name):
        raise WeightsError(f"{init} holds {name} weights, not {arch} - leave `arch` out or use {name}")
    state, sha = read_weights(found)
    result = _register_read(session, init, found.resolve(), name, state=state, sha=sha, name=None,
                            model_kwargs=None, source="hub-cache", extra_meta=study_meta(init, name))
    return _spec_from(session.get(Checkpoint, result.checkpoint_id))


def _resolve_addressed(session: "Session", init: str, arch: str | None) -> InitSpec:
    """``NAME@ID``: checkpoint ID, which must be registered under NAME."""
    name, _, raw = init.rpartition("@")
    if not raw.isdigit() or not name:
        raise WeightsError(f"bad initialisation {init!r} - write NAME@<checkpoint id>, e.g. dinov2@3 "
                           "(ids: vitmed checkpoints list)")
    ckpt = session.get(Checkpoint, int(raw))
    if ckpt is None:
        raise WeightsError(f"no checkpoint {raw} in the registry - see vitmed checkpoints list")
    if ckpt.role != "init":
        raise WeightsError(
            f"checkpoint {raw} is the {ckpt.role} checkpoint of run {ckpt.run_id}, not an initialisation - "
            f"start from it with `init` run:{ckpt.run_id}, or register it: vitmed pretrain-load run:{ckpt.run_id}"
        )
    if name not in (ckpt.init, ckpt.name):
        raise WeightsError(f"checkpoint {raw} is registered as {ckpt.init!r}, not {name!r} - see vitmed "
                           "checkpoints list")
    _check_arch(ckpt, arch, init)
    _require_file(ckpt)
    return _spec_from(ckpt, name=ckpt.init)


def registered_under(session: "Session", init: str) -> list[Checkpoint]:
    """The initialisation checkpoints registered under ``init`` (by init or name), newest first."""
    return list(session.scalars(
        select(Checkpoint)
        .where((Checkpoint.init == init) | (Checkpoint.name == init), Checkpoint.role == "init")
        .order_by(Checkpoint.id.desc())
    ))


def _check_arch(ckpt: Checkpoint, arch: str | None, init: str) -> None:
    if arch and _base_arch(arch) != _base_arch(ckpt.arch):
        raise WeightsError(
            f"{init} holds {ckpt.arch} weights, not {arch} - leave `arch` out or use {ckpt.arch}"
        )


def verify_sha256(spec: InitSpec) -> None:
    """Refuse a registered file that is gone or whose bytes changed since it was registered."""
    if spec.path is None:
        return
    p = Path(spec.path)
    if not p.is_file():
        raise WeightsError(
            f"the weights of {spec.name} ({p}) no longer exist - restore the file or register it "
            "again with vitmed pretrain-load"
        )
    if spec.sha256 and sha256_cached(p) != spec.sha256:
        raise WeightsError(
            f"the weights file {p} changed since it was registered (sha256 differs from "
            f"{spec.sha256[:12]}...) - restore the original file, or register the new one with "
            "vitmed pretrain-load"
        )


def load_init_state(spec: InitSpec) -> dict[str, "torch.Tensor"] | None:
    """The tensors of ``spec``'s file, read once and checked against its registered sha256
    (None for ``random``)."""
    if spec.path is None:
        return None
    if not Path(spec.path).is_file():
        verify_sha256(spec)  # names the missing file and the fix
    state, _ = read_weights(spec.path, sha256=spec.sha256, what=f"the weights file of {spec.name}")
    if spec.layout == hf.LAYOUT:
        state = hf.dinov2_to_timm(state)
    return state


def create_model_from_init(
    spec: InitSpec | None,
    num_findings: int,
    image_size: int,
    *,
    arch: str | None = None,
    state_dict: dict[str, "torch.Tensor"] | None = None,
    **model_kwargs: Any,
) -> tuple["torch.nn.Module", dict[str, Any]]:
    """Build ``arch`` (default: the init's) for ``num_findings`` outputs, starting from ``spec``.

    ``state_dict``: the init's tensors when the caller already read them
    (:func:`load_init_state`); otherwise they are read and verified here.  The
    kwargs registered with the checkpoint apply first, then ``model_kwargs``.
    Returns the model and a record of what was loaded (for the run's config).
    """
    arch = arch or (spec.arch if spec is not None else None)
    if arch is None:
        raise WeightsError("a model needs an architecture or an initialisation")
    has_weights = spec is not None and spec.path is not None
    if has_weights and state_dict is None:
        state_dict = load_init_state(spec)
    kwargs = {**(dict(spec.model_kwargs) if has_weights else {}), **model_kwargs}
    label = f"the weights file of {spec.name} ({spec.path})" if has_weights else "the weights file"
    model, info = models.create_model(
        arch, num_findings, image_size, state_dict if has_weights else None,
        drop_head=spec.drop_head if has_weights else True, file_label=label, **kwargs,
    )
    info.update({
        "init": spec.name if spec is not None else "random",
        "checkpoint_id": spec.checkpoint_id if spec is not None else None,
        "sha256": spec.sha256 if spec is not None else None,
    })
    return model, info
