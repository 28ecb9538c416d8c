"""The one DICOM reader: stored values to display pixels, 0 = black/air, 255 = white/bone.

Intensity convention (the only place it is defined; the image cache uses it):

1. Stored values are masked to ``BitsStored`` (sign-extended when
   ``PixelRepresentation`` is 1).
2. The Modality LUT is applied: ``RescaleSlope``/``RescaleIntercept`` or a
   Modality LUT Sequence.
3. The VOI transform is applied: the first ``WindowCenter``/``WindowWidth``
   pair with ``VOILUTFunction`` LINEAR (default), LINEAR_EXACT or SIGMOID
   (DICOM PS3.3 C.11.2.1.2), or a VOI LUT Sequence.  Without either - and
   when the window is blank, not a number or of width <= 0 - the image's own
   modality-value minimum..maximum is stretched to the full range (silently).
4. The result is scaled to 0..255 uint8; MONOCHROME1 (where high values are
   dark) is inverted so that 0 is always black, with a warning naming the file.
   ``PresentationLUTShape`` INVERSE also inverts (DX files pair it with
   MONOCHROME1: that is one inversion, not two).
   Other photometric interpretations (RGB, YBR, PALETTE COLOR) are refused.

For speed the three steps are folded into one lookup table over every
possible stored value (``2**BitsStored`` entries), and an image that is much
larger than asked for is first box-averaged by an integer factor on its stored
values, so a 2048x2048 12-bit image never becomes a float64 array.

Size limit: a header may claim far more pixels than the file holds (a 700-byte
RLE file claiming 40000 x 40000 makes the decoder allocate gigabytes).  With
``max_pixels`` the declared size (Rows x Columns x SamplesPerPixel x frames) is
checked before any pixel is decoded, as Pillow checks its decompression-bomb
limit (:data:`DEFAULT_MAX_PIXELS`).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from ..choices import DEFAULT_MAX_PIXELS
from ..errors import InputError

log = logging.getLogger("vitmed.dicom")

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
DEFER_BYTES = 256 * 1024  # larger values (pixel data) are read on demand or memory-mapped
_NATIVE_LE = {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}
PLUGIN_HINT = (
    "install a pixel-data plugin: pip install pylibjpeg pylibjpeg-libjpeg "
    "pylibjpeg-openjpeg (or pip install python-gdcm)"
)
# JPEG, JPEG-LS, JPEG 2000 and HTJ2K: the transfer syntaxes pydicom decodes only with a plugin
# (RLE and deflate it decodes itself)
PLUGIN_SYNTAX_PREFIX = "1.2.840.10008.1.2.4."


class DicomError(InputError):
    """A DICOM file that vitmed cannot turn into a grayscale image."""


class ImageTooLarge(InputError):
    """An image whose header declares more pixels than `max_pixels`; refused before decoding."""


def too_large(path, dims: str, n_pixels: int, max_pixels: int) -> ImageTooLarge:
    """The error for an image declaring ``n_pixels`` (``dims``, e.g. '40000 x 40000') over the limit."""
    return ImageTooLarge(
        f"{path}: declares {dims} = {n_pixels:,} pixels, more than `max_pixels` ({max_pixels:,}) - "
        "refused before decoding (a damaged header or a decompression bomb); raise `max_pixels` "
        "if the image is real"
    )


def _check_declared_size(ds, path, max_pixels: int | None) -> None:
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(_number(ds.get("NumberOfFrames", 1)) or 1)
    n = rows * cols * samples * frames
    if max_pixels is None or n <= max_pixels:
        return
    dims = f"{rows} x {cols}" + (f" x {samples} samples" if samples > 1 else "") \
        + (f" x {frames} frames" if frames > 1 else "")
    raise too_large(path, dims, n, max_pixels)


def _decode_failure(ds, path, exc: BaseException) -> DicomError:
    """Why pydicom could not decode the pixel data: a missing plugin only where the transfer
    syntax needs one and none is installed; otherwise the decoder's own reason."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    ts_name = getattr(uid, "name", None) or str(uid or "unknown transfer syntax")
    text = str(exc)
    if str(uid or "").startswith(PLUGIN_SYNTAX_PREFIX) and "missing" in text and "dependencies" in text:
        return DicomError(f"{path}: cannot decode {ts_name} pixel data - {PLUGIN_HINT}")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    cause = lines[-1] if lines else type(exc).__name__
    return DicomError(
        f"{path}: cannot decode {ts_name} pixel data ({cause}) - the pixel data is damaged or does not "
        "match the header"
    )


def _first(value, default=None):
    if value is None:
        return default
    try:
        if isinstance(value, (str, bytes)):
            return value
        return value[0]
    except (TypeError, IndexError):
        return value


def _number(value) -> float | None:
    """A DS/IS value (first of several) as a float; None when blank or not a number."""
    value = _first(value)
    if value is None:
        return None
    try:
        x = float(str(value).strip()) if isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def _tag_number(ds, keyword: str) -> float | None:
    try:
        return _number(ds.get(keyword))
    except (TypeError, ValueError, OverflowError):  # an invalid DS pydicom refuses to convert
        return None


def _voi(values: np.ndarray, ds) -> np.ndarray:
    """Modality LUT, then VOI transform, as floats in [0, 1] (before any inversion)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "ModalityLUTSequence" in ds:
        x = apply_modality_lut(values, ds).astype(np.float64)
    else:
        slope, intercept = _rescale(ds)
        x = values.astype(np.float64) * slope + intercept
    center = _tag_number(ds, "WindowCenter")
    width = _tag_number(ds, "WindowWidth")
    if "VOILUTSequence" in ds and (center is None or width is None):
        # LUT entries are indexed by integer modality values.
        y = apply_voi_lut(np.rint(x).astype(np.int64), ds, prefer_lut=True).astype(np.float64)
        lo, hi = float(y.min()), float(y.max())
        return (y - lo) / (hi - lo) if hi > lo else np.zeros_like(y)
    if center is not None and width is not None and width > 0:
        c, w = center, width
        func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if func == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
        if func == "LINEAR_EXACT":
            return np.clip((x - c) / w + 0.5, 0.0, 1.0)
        if w <= 1:
            return (x > c - 0.5).astype(np.float64)
        return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    return None  # type: ignore[return-value]  # caller stretches min..max


def _to_uint8(unit: np.ndarray, invert: bool) -> np.ndarray:
    out = np.rint(unit * 255.0).astype(np.uint8)
    return 255 - out if invert else out


def _stretch(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros(x.shape, dtype=np.float64)


def _stored_pixels(ds, path) -> tuple[np.ndarray, int, bool]:
    """The first frame's stored values, masked to BitsStored; (array, bits, signed)."""
    bits_alloc = int(ds.get("BitsAllocated", 16))
    bits = int(ds.get("BitsStored", bits_alloc) or bits_alloc)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts in _NATIVE_LE and bits_alloc == 16 and "PixelData" in ds and frames == 1:
        # Fast path: map the pixel bytes straight from the file (read lazily by
        # dcmread's defer_size), no copy into a bytes object; masked here.
        dtype = "<i2" if signed else "<u2"
        elem = ds.get_item(0x7FE00010, keep_deferred=True)
        offset = getattr(elem, "value_tell", None)
        if getattr(elem, "value", b"") is None and offset is not None and elem.length == rows * cols * 2:
            arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(rows, cols))
        else:
            arr = np.frombuffer(ds.PixelData, dtype=dtype, count=rows * cols).reshape(rows, cols)
        if bits < 16:
            if signed:
                shift = 16 - bits
                arr = (arr << shift) >> shift
            elif arr.max() >= (1 << bits):  # a read-only pass is cheaper than always masking
                arr = arr & np.uint16((1 << bits) - 1)
        return arr, bits, signed
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise _decode_failure(ds, path, exc) from exc
    if frames > 1:
        arr = arr[0]
    return np.asarray(arr), bits, signed


def box_reduce(arr: np.ndarray, factor: int, max_value: int | None = None) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks (edge remainder dropped); integers stay integers.

    Sums contiguous row slices, then column slices, in the narrowest safe
    unsigned type: about 3x faster than PIL's ``reduce`` on 16-bit data.
    """
    if factor <= 1:
        return arr
    h, w = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    arr = arr[:h, :w]
    if not np.issubdtype(arr.dtype, np.integer) or arr.dtype.kind == "i":
        return arr.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    top = int(max_value if max_value is not None else np.iinfo(arr.dtype).max)
    acc = np.uint16 if factor * factor * top <= 0xFFFF else np.uint32
    rows = arr[0::factor].astype(acc)
    for i in range(1, factor):
        rows += arr[i::factor]
    out = rows[:, 0::factor].copy()
    for j in range(1, factor):
        out += rows[:, j::factor]
    n = factor * factor
    out += acc(n // 2)  # round half up
    out //= acc(n)
    return out


def reduce_factor(shape: tuple[int, int], target: int | None) -> int:
    """The integer box factor that keeps the longer side at least twice ``target``."""
    if not target:
        return 1
    return max(1, max(shape) // (2 * target))


def decode_dicom(path: str | os.PathLike, *, reduce_to: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, bool]:
    """(uint8 image, was_monochrome1) for one DICOM file; see the module docstring.

    ``reduce_to``: box-average first so that the longer side stays >= 2 x this.
    ``max_pixels``: refuse (:class:`ImageTooLarge`) a file declaring more pixels, before
    decoding; None for no limit.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():  # invalid DS/IS values are handled below, not warned per file
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        raise DicomError(f"{path}: not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise DicomError(f"{path}: the DICOM file holds no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in GRAYSCALE:
        raise DicomError(
            f"{path}: photometric interpretation {photometric} is not a grayscale radiograph "
            "(vitmed reads MONOCHROME1 and MONOCHROME2 only)"
        )
    # DX images pair MONOCHROME1 with Presentation LUT Shape INVERSE (one
    # inversion, not two); INVERSE on a MONOCHROME2 image inverts it too.
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    invert = photometric == "MONOCHROME1" or shape == "INVERSE"
    _check_declared_size(ds, path, max_pixels)
    try:
        arr, bits, signed = _stored_pixels(ds, path)
    except DicomError:
        raise
    except (ValueError, AttributeError, KeyError, EOFError) as exc:
        raise DicomError(f"{path}: pixel data is truncated or malformed ({exc})") from exc
    if arr.ndim != 2:
        raise DicomError(f"{path}: expected one grayscale frame, got pixel array of shape {arr.shape}")

    factor = reduce_factor(arr.shape, reduce_to)
    if bits <= 16 and np.issubdtype(arr.dtype, np.integer):
        offset = (1 << (bits - 1)) if signed else 0
        domain = np.arange(-offset, (1 << bits) - offset, dtype=np.int64)
        unit = _voi(domain, ds)
        # Unsigned values are already masked to BitsStored; signed ones shift to 0..2**bits-1.
        index = (arr.astype(np.int32) + offset).astype(np.uint16) if offset else arr
        index = box_reduce(index, factor, (1 << bits) - 1)
        if unit is None:
            # No window: stretch this image's own range via the same table.
            lo, hi = int(index.min()), int(index.max())
            x = _modality_only(domain, ds)
            xlo, xhi = x[lo], x[hi]
            unit = np.clip((x - min(xlo, xhi)) / (abs(xhi - xlo) or 1.0), 0.0, 1.0)
        lut = _to_uint8(unit, invert)
        return np.take(lut, index), invert
    arr = box_reduce(arr, factor)
    unit = _voi(arr.astype(np.float64), ds)
    if unit is None:
        unit = _stretch(_modality_only(arr, ds))
    return _to_uint8(unit, invert), invert


def _modality_only(values: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(values, ds).astype(np.float64)
    slope, intercept = _rescale(ds)
    return values.astype(np.float64) * slope + intercept


def _rescale(ds) -> tuple[float, float]:
    slope = _tag_number(ds, "RescaleSlope")
    intercept = _tag_number(ds, "RescaleIntercept")
    return (slope if slope else 1.0), (intercept if intercept is not None else 0.0)


def read_dicom(path: str | os.PathLike, *, reduce_to: int | None = None, warn: bool = True) -> np.ndarray:
    """A DICOM file as a uint8 grayscale image, 0 = black; warns once per MONOCHROME1 file."""
    image, inverted = decode_dicom(path, reduce_to=reduce_to)
    if inverted and warn:
        log.warning("%s is MONOCHROME1: inverted so that 0 is black", path)
    return image


def is_dicom(path: str | os.PathLike) -> bool:
    """By suffix (.dcm, .dicom) or by the 'DICM' marker at byte 128."""
    suffix = Path(path).suffix.lower()
    if suffix in {".dcm", ".dicom"}:
        return True
    if suffix in {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}:
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def write_dicom(
    path: str | os.PathLike,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    signed: bool = False,
    presentation_lut_shape: str | None = None,
) -> Path:
    """Write a small uncompressed DICOM (for tests, benchmarks and examples)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if presentation_lut_shape is not None:
        ds.PresentationLUTShape = presentation_lut_shape
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2" if signed else "<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


__all__ = ["DEFAULT_MAX_PIXELS", "DicomError", "ImageTooLarge", "box_reduce", "decode_dicom", "is_dicom", "read_dicom", "reduce_factor", "write_dicom"]
