"""Small helpers every layer uses: one of each, so a message or a file write looks the same everywhere."""

from __future__ import annotations

import math
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


def first_line(obj: Any) -> str:
    """The first non-empty line of an exception (or any object's text); its type name when empty."""
    text = str(obj).strip()
    if not text:
        return type(obj).__name__ if isinstance(obj, BaseException) else ""
    return text.splitlines()[0].strip()


def file_token() -> str:
    """A random token for the names of a row's files (a dataset's cache, a run's folder), so two
    registries sharing one workspace never write to, or delete, each other's files."""
    return secrets.token_hex(4)


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (numpy scalars included), else None."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_bytes(n: int | float) -> str:
    """A size as people read it: 512 B, 3.2 MB, 41.7 GB (decimal units, as disks are sold)."""
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns


def format_p(value: float | None) -> str:
    """A p-value as tables show it: '<0.001', three decimals, or '-' when undefined."""
    value = finite_or_none(value)
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def output_file(path: str | os.PathLike, param: str = "out") -> Path:
    """An output file's path, its folder created when missing; a folder or an unwritable place is
    refused naming ``param``.  Every command that writes a file the user names goes through here."""
    from .errors import InputError

    out = Path(path).expanduser()
    if out.is_dir():
        raise InputError(f"`{param}` {out} is a folder - give a file name in it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder of `{param}` {out}: {exc.strerror or exc} - choose "
                         "a writable place") from exc
    return out


def _umask() -> int:
    try:  # reading /proc does not change the process umask (os.umask would, briefly)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | None = None, *,
                 writer: Callable[[BinaryIO], None] | None = None) -> Path:
    """Write ``data`` (or whatever ``writer(fh)`` writes) to ``path`` all at once.

    The bytes go to a temporary file in the same folder, which then replaces
    ``path``: a reader, or a crash, never sees half a file.  The file gets the
    mode a plain ``open()`` would give it (the umask applies).
    """
    if (data is None) == (writer is None):
        raise TypeError("atomic_write takes data or writer, not both")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if writer is not None:
                writer(fh)
            else:
                fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
