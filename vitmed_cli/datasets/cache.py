"""Source images to the cache: decode, make square, write rows of one memory-mapped array.

Cache layout: one ``.npy`` file per dataset and image size, shape
``(n_rows, size, size)``, uint8, 0 = black/air, 255 = white/bone; readers open
it with ``np.load(path, mmap_mode="r")``.  ``Image.cache_index`` is the row.

Aspect ratio (the one rule): the longer side is resized to ``size`` (bilinear,
antialiased), the shorter side keeps the aspect ratio, and the image is
centred on a black (0) square.  Nothing is cropped.

Decoding per source kind:

* DICOM: :mod:`vitmed_cli.dicom` (rescale, window/VOI LUT, BitsStored,
  MONOCHROME1 inverted).
* 16-bit PNG (PadChest): the image's own minimum..maximum is stretched to
  0..255 (PadChest files use very different parts of the 16-bit range, so
  scaling by bit depth would leave many images nearly black).  A task may
  carry an ``invert`` flag: PadChest PNGs whose source DICOM was MONOCHROME1
  keep the stored values (bright air), so ingest inverts them.
* 8-bit grayscale PNG as is; RGB/RGBA/palette images converted to luminance
  (alpha ignored).
* JPEG: reduced-size DCT decoding (``PIL.Image.draft``) straight to grayscale
  at the smallest scale that is still at least ``size``.

Large images are box-averaged by an integer factor before the final resize.
Ingest runs over worker processes that write straight into the memmap by row,
so no pixels travel back through pickling.

Disk space: the cache's size is known before the first image is decoded, so
:func:`ensure_cache` checks the free space and then reserves the file's blocks
(``posix_fallocate``): a disk that fills up is an error naming the file and the
space, never a SIGBUS in the middle of a write.  A worker process that dies
anyway ends :func:`fill_cache` with an error at once (the pool notices the dead
process) instead of waiting for it forever.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .dicom import DEFAULT_MAX_PIXELS, box_reduce, decode_dicom, is_dicom, reduce_factor, too_large
from .._util import first_line, format_bytes
from ..errors import InputError, StorageError


def fit_square(image, size: int) -> np.ndarray:
    """A PIL 'L' image (or uint8 array) resized so its longer side is ``size``, centred on black."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    w, h = image.size
    scale = size / max(w, h)
    nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.BILINEAR, reducing_gap=2.0)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.asarray(image, dtype=np.uint8)
    return out


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    lo, hi = int(arr.min()), int(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = (arr.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.rint(scaled).astype(np.uint8)


def _invert(image):
    return 255 - np.asarray(image, dtype=np.uint8)


def _open_pil(path: str, max_pixels: int | None):
    """The image with its header read and no pixel decoded; refused when it declares more than
    ``max_pixels`` (vitmed's limit replaces Pillow's, which would refuse above twice its own)."""
    from PIL import Image

    pil_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        img = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        img.close()
        raise too_large(path, f"{w} x {h}", w * h, max_pixels)
    return img


def _decode_pil(path: str, size: int, invert: bool = False,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    with _open_pil(path, max_pixels) as img:
        if img.format == "JPEG":
            img.draft("L", (size, size))
        img.load()
        mode = img.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(img)
            if arr.dtype.kind == "i" and arr.size and arr.min() >= 0 and arr.max() <= 0xFFFF:
                arr = arr.astype(np.uint16)
            arr = _stretch_to_uint8(box_reduce(arr, reduce_factor(arr.shape, size)))
            return fit_square(_invert(arr) if invert else arr, size)
        if mode == "F":
            arr = _stretch_to_uint8(np.asarray(img))
            return fit_square(_invert(arr) if invert else arr, size)
        if mode != "L":
            img = img.convert("L")
        factor = reduce_factor(img.size[::-1], size)
        if factor > 1:
            img = img.reduce(factor)
        return fit_square(_invert(img) if invert else img, size)


def decode_image(path: str | os.PathLike, size: int, *, invert: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, bool]:
    """(``size`` x ``size`` uint8 image, was_inverted) for a DICOM, PNG or JPEG file.

    ``invert``: the caller knows this file keeps MONOCHROME1 values (bright
    air), e.g. a PadChest PNG whose source DICOM was MONOCHROME1; it is
    inverted before the black padding is added.  ``max_pixels``: a file whose header
    declares more pixels is refused before decoding (:class:`~vitmed_cli.datasets.dicom.ImageTooLarge`).
    """
    path = str(path)
    if is_dicom(path):
        image, inverted = decode_dicom(path, reduce_to=size, max_pixels=max_pixels)
        if invert:
            image, inverted = _invert(image), not inverted
        return fit_square(image, size), inverted
    return _decode_pil(path, size, invert, max_pixels), invert


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """The cache's view of one file: ``size`` x ``size`` uint8, 0 = black."""
    return decode_image(path, size)[0]


# --- the cache -------------------------------------------------------------

NPY_HEADER_BYTES = 128  # numpy's .npy header for a 3-d uint8 array


def _allocated(path: Path) -> int:
    """Bytes of ``path`` already on disk (a memmap file is sparse until written)."""
    try:
        st = path.stat()
    except OSError:
        return 0
    return min(st.st_size, getattr(st, "st_blocks", 0) * 512)


def _no_space(path: Path, needed: int, free: int) -> StorageError:
    return StorageError(
        f"not enough disk space for the image cache {path}: it needs {format_bytes(needed)} more and "
        f"{path.parent} has {format_bytes(free)} free - free space there (or move the workspace, "
        "VITMED_HOME, to a larger disk), then run the same ingest again: it resumes where it stopped"
    )


def check_space(path: Path, n_bytes: int) -> None:
    """Refuse, before anything is written, a file of ``n_bytes`` that its disk cannot hold
    (the blocks ``path`` already has count as held)."""
    path = Path(path)
    needed = n_bytes - _allocated(path)
    if needed <= 0:
        return
    free = shutil.disk_usage(path.parent).free
    if needed > free:
        raise _no_space(path, needed, free)


def _reserve(path: Path) -> None:
    """Give the file its blocks now, so writing a row never meets a full disk (SIGBUS)."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:  # macOS, Windows: the free-space check stands alone
        return
    n_bytes = path.stat().st_size
    if _allocated(path) >= n_bytes:  # a resumed cache whose blocks are all there already
        return
    fd = os.open(path, os.O_RDWR)
    try:
        fallocate(fd, 0, n_bytes)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path, n_bytes - _allocated(path), shutil.disk_usage(path.parent).free) from exc
        # a file system without fallocate: the free-space check stands alone
    finally:
        os.close(fd)


def cache_bytes(n_rows: int, size: int) -> int:
    """The size of a cache file of ``n_rows`` images of ``size`` x ``size``."""
    return NPY_HEADER_BYTES + max(n_rows, 1) * size * size


def ensure_cache(path: Path, n_rows: int, size: int) -> bool:
    """Create the cache file, or grow it to ``n_rows`` keeping its rows; its disk space is checked
    and reserved first (:class:`StorageError` naming the file and the space when it does not fit).

    Returns True when earlier rows were kept, False when the file is new (so
    every image must be decoded again).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        try:
            old = np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            old = None  # a torn file from a crash: start again, rows are re-decoded
        if old is not None and old.dtype == np.uint8 and old.shape[1:] == (size, size):
            if old.shape[0] >= n_rows:
                del old
                check_space(path, path.stat().st_size)
                _reserve(path)
                return True
            tmp = path.with_suffix(".grow.npy")
            check_space(tmp, cache_bytes(n_rows, size))
            new = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n_rows, size, size))
            _reserve(tmp)
            step = 4096
            for start in range(0, old.shape[0], step):
                stop = min(start + step, old.shape[0])
                new[start:stop] = old[start:stop]
            new.flush()
            del new, old
            os.replace(tmp, path)
            return True
        del old
        path.unlink()  # a torn or differently shaped file: its blocks do not count as free
    check_space(path, cache_bytes(n_rows, size))
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(max(n_rows, 1), size, size))
    mm.flush()
    del mm
    _reserve(path)
    return False


def open_cache(path: str | os.PathLike) -> np.ndarray:
    """The cache array, read-only and memory-mapped."""
    return np.load(path, mmap_mode="r")


@dataclass(frozen=True)
class CacheResult:
    """What happened to one image: its row, or the error that kept it out."""

    image_id: int
    row: int
    error: str | None
    inverted: bool = False


_WORKER: dict = {}


def _init_worker(cache_path: str, size: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    _WORKER["cache"] = np.load(cache_path, mmap_mode="r+")
    _WORKER["size"] = size
    _WORKER["max_pixels"] = max_pixels


def _one_line(exc: BaseException) -> str:
    """The error stored with an unreadable image: its type and first line."""
    return f"{type(exc).__name__}: {first_line(exc)}"[:500]


def _decode_chunk(chunk: Sequence[tuple[int, int, str]]) -> list[CacheResult]:
    cache, size, max_pixels = _WORKER["cache"], _WORKER["size"], _WORKER["max_pixels"]
    out: list[CacheResult] = []
    for image_id, row, path, *flags in chunk:
        try:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"image file not found: {path}")
            pixels, inverted = decode_image(path, size, invert=bool(flags and flags[0]),
                                            max_pixels=max_pixels)
            cache[row] = pixels
            out.append(CacheResult(image_id, row, None, inverted))
        except Exception as exc:  # noqa: BLE001 - any bad file is recorded and skipped
            out.append(CacheResult(image_id, row, _one_line(exc)))
    return out


def _chunks(tasks: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(tasks), size):
        yield tasks[start : start + size]


def fill_cache(
    cache_path: str | os.PathLike,
    tasks: Sequence[tuple],
    size: int,
    *,
    workers: int | None = None,
    on_results: Callable[[list[CacheResult]], None] | None = None,
    chunk_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> int:
    """Decode ``(image_id, row, path[, invert])`` tasks into the cache; returns how many were done.

    ``workers`` processes (default: all CPUs) each map the cache file and write
    their rows; ``on_results`` receives each finished chunk (for the registry
    update and the progress bar).  One worker, or a handful of images, runs in
    this process.  A file declaring more than ``max_pixels`` pixels is recorded as
    unreadable without being decoded.
    """
    tasks = list(tasks)
    if not tasks:
        return 0
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise InputError(f"`workers` must be at least 1 (got {workers})")
    chunk_size = chunk_size or max(1, min(64, len(tasks) // (workers * 4) or 1))
    done = 0
    if workers == 1 or len(tasks) <= 2:
        _init_worker(str(cache_path), size, max_pixels)
        try:
            for chunk in _chunks(tasks, chunk_size):
                results = _decode_chunk(chunk)
                done += len(results)
                if on_results:
                    on_results(results)
        finally:
            _WORKER["cache"].flush()
            _WORKER.clear()
        return done
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    n_workers = min(workers, len(tasks))
    # concurrent.futures, not multiprocessing.Pool: a worker that dies (killed, out of memory, a
    # decoder that crashes) breaks the pool at once, where Pool would wait for its chunk forever
    pool = ProcessPoolExecutor(n_workers, mp_context=mp.get_context(method), initializer=_init_worker,
                               initargs=(str(cache_path), size, max_pixels))
    chunks = iter(_chunks(tasks, chunk_size))
    running: set = set()
    try:
        while True:
            while len(running) < 4 * n_workers:  # a few chunks ahead of each worker, not all of them
                chunk = next(chunks, None)
                if chunk is None:
                    break
                running.add(pool.submit(_decode_chunk, chunk))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                results = future.result()
                done += len(results)
                if on_results:
                    on_results(results)
    except BrokenProcessPool as exc:
        raise _worker_died(Path(cache_path)) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return done


def _worker_died(path: Path) -> StorageError:
    free = shutil.disk_usage(path.parent).free
    return StorageError(
        f"a decoding process died while writing the image cache {path} ({path.parent} has "
        f"{format_bytes(free)} free) - the images cached so far are kept: run the same ingest again to "
        "resume, with `workers` 1 to see the file that fails"
    )


__all__ = [
    "CacheResult",
    "cache_bytes",
    "check_space",
    "decode_image",
    "ensure_cache",
    "fill_cache",
    "fit_square",
    "load_image",
    "open_cache",
]
