"""Initial weights: read weight files safely, register them, resolve an ``--init`` name.

The study's initialisations are ``random``, ``dinov2`` (self-supervised DINOv2),
``imagenet`` (supervised ImageNet-21k) and a checkpoint of an earlier vitmed run
(``run:<id>``, e.g. a model fine-tuned on MIMIC-CXR).  Every registered file is
known by its sha256, so a run records exactly which weights it started from.

Safety: weight files are read with ``torch.load(..., weights_only=True)`` or
safetensors, never with plain pickle; a file whose pickle would run code is
refused.  Nothing is downloaded unless the caller asks for it.

Architecture overrides (``model_kwargs`` such as ``{"depth": 2, "embed_dim": 48}``)
registered with a file are kept in ``Checkpoint.meta["model_kwargs"]`` and applied
by :func:`vitmed_cli.models.create_model`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import select

from .errors import WeightsError
from .registry.models import Checkpoint, Run

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sqlalchemy.orm import Session

    from .registry.db import Registry

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

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
VALID_INIT_HELP = "random, dinov2, imagenet, run:<id>, ckpt:<id> or a registered checkpoint name"


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
        }


# --------------------------------------------------------------------------- files


def sha256_file(path: str | os.PathLike, chunk: int = 4 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256_cached(path: Path) -> str:
    """sha256 of ``path``, hashed once per process while its size and mtime stay the same.

    Starting a run checks the init file before the run row is written and again when the
    model is built; a ViT-B file is 350 MB, so the second check reuses the first hash.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise WeightsError(f"weights file {p} does not exist - check the path given to --file")
    if not p.is_file():
        raise WeightsError(f"weights path {p} is not a file - pass the .pth, .bin or .safetensors file itself")
    return p.resolve()


_SAFE_GLOBAL_PREFIXES = ("torch.", "torch._utils.", "collections.OrderedDict", "builtins.set",
                         "numpy.core.multiarray._reconstruct", "_codecs.encode")


def _pickle_calls(path: Path, message: str) -> list[str]:
    """Callables a refused pickle names (read with pickletools, which never executes)."""
    found = re.findall(r"GLOBAL ([\w.]+)", message)
    if found:
        return found
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return []
                data = zf.read(member)
        else:
            with open(path, "rb") as fh:
                data = fh.read(64 << 20)
        calls: list[str] = []
        strings: list[str] = []
        for op, arg, _pos in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                calls.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                calls.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - not a pickle at all
        return []
    return [c for c in calls if not c.startswith(_SAFE_GLOBAL_PREFIXES)]


def read_state_dict(path: str | os.PathLike) -> dict[str, "torch.Tensor"]:
    """The tensors of a weight file (.pth/.bin state dict or .safetensors), never running code.

    Wrapped dicts (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped, a
    DataParallel ``module.`` prefix is removed, non-tensor entries are dropped.
    """
    import torch

    p = _check_file(path)
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
            raise WeightsError(
                f"cannot read {p} as safetensors ({_first_line(exc)}) - the file may be truncated; "
                "download it again"
            ) from exc
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            calls = _pickle_calls(p, str(exc))
            if calls:
                raise WeightsError(
                    f"weights file {p} refused: it contains code, not only tensors (it would call "
                    f"{', '.join(calls[:3])}) - re-save it as a plain state dict "
                    "(torch.save(model.state_dict(), PATH)) or as .safetensors"
                ) from exc
            raise WeightsError(
                f"cannot read {p} as a PyTorch weights file (torch.load weights_only refused it) - "
                "expected a .pth/.bin state dict or a .safetensors file; re-save it with "
                "torch.save(model.state_dict(), PATH)"
            ) from exc
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(
                f"cannot read {p} as a PyTorch weights file ({_first_line(exc)[:160]}) - expected a "
                ".pth/.bin state dict or a .safetensors file"
            ) from exc
    for _ in range(3):
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
                continue
        break
    if not isinstance(obj, dict):
        raise WeightsError(
            f"weights file {p} holds a {type(obj).__name__}, not a state dict - save "
            "model.state_dict() instead"
        )
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise WeightsError(
            f"weights file {p} holds no tensors (keys: {', '.join(list(map(str, obj))[:8])}) - "
            "save model.state_dict() instead"
        )
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


# --------------------------------------------------------------------------- hub cache


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
            f"timm has no Hugging Face weights for {arch} - pass the file with --file PATH"
        )
    from huggingface_hub import hf_hub_download

    last: Exception | None = None
    for filename in _HUB_FILES:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=str(hub_cache_dir())))
        except Exception as exc:  # noqa: BLE001
            last = exc
    raise WeightsError(
        f"cannot download {repo} ({_first_line(last) if last else 'no file'}) - download "
        f"model.safetensors from https://huggingface.co/{repo} and pass it with --file PATH"
    )


# --------------------------------------------------------------------------- registry


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
    p = _check_file(path)
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


def _spec_from(ckpt: Checkpoint, name: str | None = None) -> InitSpec:
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
    """Turn an ``--init`` value into an :class:`InitSpec` (newest registered weights).

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
            return _spec_from(rows[0])
        target = arch or DEFAULT_ARCH[init]
        if use_hub_cache:
            found = find_hub_weights(target)
            if found is not None:
                result = _register_file(session, init, found, target, name=None, model_kwargs=None,
                                        source="hub-cache")
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
            return _spec_from(rows[0])

    names = sorted(
        set(session.scalars(select(Checkpoint.init).where(Checkpoint.role == "init")).all())
        - set(STUDY_INITS)
    )
    extra = f" (registered: {', '.join(names)})" if names else ""
    raise WeightsError(f"unknown initialisation {init!r} - use one of: {VALID_INIT_HELP}{extra}")


def _check_arch(ckpt: Checkpoint, arch: str | None, init: str) -> None:
    if arch and _base_arch(arch) != _base_arch(ckpt.arch):
        raise WeightsError(
            f"{init} holds {ckpt.arch} weights, not {arch} - drop --arch or pass --arch {ckpt.arch}"
        )


# --------------------------------------------------------------------------- pretrain-load


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
    path: Path, arch: str, model_kwargs: dict[str, Any] | None
) -> tuple[dict[str, Any], Any]:
    """Read ``path`` safely and check it against ``arch``; the meta to store and the check."""
    from . import models

    state = read_state_dict(path)
    check = models.check_weights(state, arch, model_kwargs=model_kwargs, file_label=str(path))
    meta: dict[str, Any] = {"file_name": path.name, "n_keys": check.n_keys}
    if model_kwargs:
        meta["model_kwargs"] = dict(model_kwargs)
    if check.ignored_keys:
        meta["ignored_keys"] = list(check.ignored_keys)
    if check.head_keys:
        meta["head_keys"] = list(check.head_keys)
    return meta, check


def _register_file(
    session: "Session",
    init: str,
    path: Path,
    arch: str,
    *,
    name: str | None,
    model_kwargs: dict[str, Any] | None,
    source: str,
    sha: str | None = None,
    checked: tuple[dict[str, Any], Any] | None = None,
) -> PretrainLoadResult:
    """Check ``path`` against ``arch`` and register it (no-op when already registered)."""
    sha = sha or sha256_file(path)
    found = _find_registered(session, sha, arch)
    if found is not None:
        return _result(found, existing=True)
    meta, check = checked or _checked_meta(path, arch, model_kwargs)
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
    notify: Callable[[str], None] | None = None,
) -> PretrainLoadResult:
    """Register the starting weights ``init`` (dinov2, imagenet, file, run:<id>) after checking them.

    The file is hashed, read without running code, loaded into ``arch`` with
    strict key checks (only the classifier head may differ), then registered in
    one transaction.  The same file again returns the existing checkpoint.
    """
    from . import models

    init = (init or "").strip()
    from .models import parse_model_kwargs

    kwargs = parse_model_kwargs(model_kwargs)

    if init.startswith("run:"):
        run_id = _parse_id(init, "run:")
        with registry.session() as session:
            best = _run_best(session, run_id)
            _require_file(best)
            found = _find_registered(session, best.sha256, best.arch)
            if found is not None:
                return _result(found, existing=True)
            label = name or init
            ckpt = Checkpoint(
                name=label, init=label, arch=best.arch, path=best.path, sha256=best.sha256,
                source="run", role="init", run_id=run_id, epoch=best.epoch,
                n_params=best.n_params, image_size=best.image_size, findings=best.findings,
                meta={**(best.meta or {}), "from_checkpoint": best.id, "from_run": run_id},
            )
            session.add(ckpt)
            session.flush()
            return _result(ckpt, existing=False)

    if init == "random":
        raise WeightsError(
            "random needs no weights file - use --init random when fine-tuning; pretrain-load "
            "takes dinov2, imagenet, file or run:<id>"
        )
    if init not in ("dinov2", "imagenet", "file"):
        raise WeightsError(
            f"unknown initialisation {init!r} for pretrain-load - use one of: dinov2, imagenet, "
            "file (any timm --arch), run:<id>"
        )
    if init == "file":
        if not arch:
            raise WeightsError(
                "pretrain-load file needs the architecture - add --arch TIMM_NAME, e.g. --arch resnet50d"
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
            if init in _OFFICIAL:
                raise _missing_weights_error(init, arch)
            raise WeightsError(
                f"no weights for {arch} in the Hugging Face cache ({hub_cache_dir()}) - pass the "
                f"file: vitmed pretrain-load file --file PATH --arch {arch}"
            )
        path, source = found.resolve(), "hub-cache"
    else:
        path = _check_file(file)

    notify = notify or (lambda _msg: None)
    notify(f"hashing {path.name}")
    sha = sha256_file(path)
    with registry.session() as session:
        found_ckpt = _find_registered(session, sha, arch)
        if found_ckpt is not None:
            return _result(found_ckpt, existing=True)
    # Checked outside any transaction: a ViT-B file takes seconds to read.
    notify(f"checking {path.name} against {arch}")
    checked = _checked_meta(path, arch, kwargs)
    with registry.session() as session:
        return _register_file(
            session, init_name, path, arch, name=label, model_kwargs=kwargs, source=source,
            sha=sha, checked=checked,
        )


def verify_sha256(spec: InitSpec) -> None:
    """Refuse a registered file whose bytes changed since it was registered."""
    if spec.path is None:
        return
    p = Path(spec.path)
    if not p.is_file():
        raise WeightsError(
            f"the weights of {spec.name} ({p}) no longer exist - restore the file or register it "
            "again with vitmed pretrain-load"
        )
    if spec.sha256 and _sha256_cached(p) != spec.sha256:
        raise WeightsError(
            f"the weights file {p} changed since it was registered (sha256 differs from "
            f"{spec.sha256[:12]}...) - restore the original file, or register the new one with "
            "vitmed pretrain-load"
        )


__all__ = [
    "DEFAULT_ARCH",
    "InitSpec",
    "PretrainLoadResult",
    "STUDY_INITS",
    "find_hub_weights",
    "hub_cache_dir",
    "pretrain_load",
    "read_state_dict",
    "register_checkpoint",
    "resolve_init",
    "sha256_file",
    "verify_sha256",
]
