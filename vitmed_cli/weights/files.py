"""Weight files: hash them, and read their tensors without ever running code from them.

Files are read with ``torch.load(..., weights_only=True)`` or safetensors, never
with plain pickle; a file whose pickle would run code is refused and the
callables it names are listed (read with :mod:`pickletools`, which executes
nothing).  :func:`read_state_dict` with ``sha256`` hashes exactly the bytes it
parses, so the weights used are the weights recorded.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util import first_line
from ..errors import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import torch

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def sha256_file(path: str | os.PathLike, chunk: int = 4 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_cached(path: str | os.PathLike) -> str:
    """sha256 of ``path``, hashed once per process while its size and mtime stay the same."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def check_file(path: str | os.PathLike) -> Path:
    """``path`` resolved, or a WeightsError saying it is missing or not a file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise WeightsError(f"weights file {p} does not exist - check the path")
    if not p.is_file():
        raise WeightsError(f"weights path {p} is not a file - pass the .pth, .bin or .safetensors file itself")
    return p.resolve()


_SAFE_GLOBAL_PREFIXES = ("torch.", "torch._utils.", "collections.OrderedDict", "builtins.set",
                         "numpy.core.multiarray._reconstruct", "_codecs.encode")


def _pickle_calls(data: bytes, message: str) -> list[str]:
    """Callables a refused pickle names (read with pickletools, which never executes)."""
    found = re.findall(r"GLOBAL ([\w.]+)", message)
    if found:
        return found
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return []
                data = zf.read(member)
        calls: list[str] = []
        strings: list[str] = []
        for op, arg, _pos in pickletools.genops(data[: 64 << 20]):
            if isinstance(arg, str):
                strings.append(arg)
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                calls.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                calls.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - not a pickle at all
        return []
    return [c for c in calls if not c.startswith(_SAFE_GLOBAL_PREFIXES)]


def _parse(p: Path, data: bytes) -> Any:
    """The object a weights file holds, from its bytes, without running code."""
    import torch

    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
            raise WeightsError(
                f"cannot read {p} as safetensors ({first_line(exc)}) - the file is damaged or "
                "truncated; restore or download it again"
            ) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        calls = _pickle_calls(data, str(exc))
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
            f"cannot read {p} as a PyTorch weights file ({first_line(exc)[:160]}) - expected a "
            ".pth/.bin state dict or a .safetensors file"
        ) from exc


def _as_state_dict(p: Path, obj: Any) -> dict[str, "torch.Tensor"]:
    import torch

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


def read_weights(
    path: str | os.PathLike, *, sha256: str | None = None, what: str | None = None
) -> tuple[dict[str, "torch.Tensor"], str]:
    """(state dict, sha256) of a weights file, read once: the hash is of the bytes parsed.

    With ``sha256`` (the registered hash) a file whose bytes differ is refused before
    anything is parsed - a swapped or changed file never loads under another's record.
    Wrapped dicts (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped, a
    DataParallel ``module.`` prefix is removed, non-tensor entries are dropped.
    """
    p = check_file(path)
    data = p.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise WeightsError(
            f"{what or 'the weights file'} ({p}) changed since it was registered (sha256 "
            f"{digest[:12]}..., registered {sha256[:12]}...) - restore the original file, or "
            "register the new one (vitmed pretrain-load)"
        )
    return _as_state_dict(p, _parse(p, data)), digest


def read_state_dict(path: str | os.PathLike) -> dict[str, "torch.Tensor"]:
    """The tensors of a weight file (.pth/.bin state dict or .safetensors), never running code."""
    return read_weights(path)[0]
