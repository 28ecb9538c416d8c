"""The DICOM reader: rescale, window, BitsStored, MONOCHROME1, refusals, shipped pydicom files."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pydicom
import pytest

from vitmed_cli.datasets.dicom import DicomError, decode_dicom, is_dicom, read_dicom, write_dicom
from vitmed_cli.datasets.cache import decode_image, fit_square


def _window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, written out independently, as 0..255."""
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    y = np.where(x <= lo, 0.0, np.where(x > hi, 1.0, (x - (c - 0.5)) / (w - 1) + 0.5))
    return np.rint(y * 255).astype(np.uint8)


@pytest.fixture
def ramp() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 4096, size=(48, 40)).astype(np.uint16)


def test_rescale_and_window_match_the_dicom_formula(tmp_path, ramp):
    path = write_dicom(tmp_path / "a.dcm", ramp, slope=2.0, intercept=-100.0, window=(3000, 4000))
    got, inverted = decode_dicom(path)
    expected = _window(ramp.astype(np.float64) * 2 - 100, 3000, 4000)
    assert not inverted
    assert got.dtype == np.uint8 and got.shape == ramp.shape
    assert np.array_equal(got, expected)


def test_monochrome1_is_inverted_with_a_warning_naming_the_file(tmp_path, ramp, caplog):
    m2 = write_dicom(tmp_path / "m2.dcm", ramp, window=(2048, 4096))
    m1 = write_dicom(tmp_path / "m1.dcm", ramp, window=(2048, 4096), photometric="MONOCHROME1")
    with caplog.at_level(logging.WARNING, logger="vitmed.dicom"):
        a = read_dicom(m2)
        b = read_dicom(m1)
    assert np.array_equal(b, 255 - a)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and str(m1) in msgs[0] and "MONOCHROME1" in msgs[0]


def test_bits_stored_masks_junk_in_the_high_bits(tmp_path, ramp):
    clean = write_dicom(tmp_path / "clean.dcm", ramp, window=(2048, 4096))
    junk = ramp | np.uint16(0xA000)  # overlay-style bits above BitsStored=12
    dirty = write_dicom(tmp_path / "dirty.dcm", junk, window=(2048, 4096))
    assert np.array_equal(read_dicom(clean), read_dicom(dirty))


def test_without_window_the_image_range_is_stretched(tmp_path):
    px = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    got = read_dicom(write_dicom(tmp_path / "nw.dcm", px))
    expected = np.rint((px - 100) / 400 * 255).astype(np.uint8)
    assert np.array_equal(got, expected)


def test_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset

    px = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    path = write_dicom(tmp_path / "voi.dcm", px)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "OW", (4095 - np.arange(4096)).astype("<u2").tobytes())  # reversed ramp
    ds.VOILUTSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    got = read_dicom(path)
    expected = np.rint((4095 - px.astype(np.float64)) / 4095 * 255).astype(np.uint8)  # LUT output range
    assert np.array_equal(got, expected)


def test_signed_12_bit_values(tmp_path):
    px = np.array([[-2048, -1], [0, 2047]], dtype=np.int16)
    got = read_dicom(write_dicom(tmp_path / "s.dcm", px, signed=True, window=(0, 4096)))
    assert np.array_equal(got, _window(px.astype(np.float64), 0, 4096))


def test_reduced_decoding_averages_blocks_before_the_lut(tmp_path):
    rng = np.random.default_rng(1)
    px = rng.integers(0, 4096, size=(512, 384)).astype(np.uint16)
    path = write_dicom(tmp_path / "big.dcm", px, window=(2048, 4096))
    got = read_dicom(path, reduce_to=64)  # factor 512 // 128 = 4
    assert got.shape == (128, 96)
    block = px.reshape(128, 4, 96, 4).astype(np.float64).mean(axis=(1, 3))
    expected = _window(np.floor(block + 0.5), 2048, 4096)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_other_photometric_interpretations_are_refused_by_name(tmp_path, ramp):
    path = write_dicom(tmp_path / "pal.dcm", ramp, photometric="PALETTE COLOR")
    with pytest.raises(DicomError, match="PALETTE COLOR"):
        decode_dicom(path)


def test_truncated_and_non_dicom_files_raise_dicom_errors(tmp_path, ramp):
    path = write_dicom(tmp_path / "t.dcm", ramp, window=(2048, 4096))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(DicomError, match="t.dcm"):
        decode_dicom(path)
    bogus = tmp_path / "bogus.dicom"
    bogus.write_bytes(b"not a dicom file at all")
    with pytest.raises(DicomError, match="bogus.dicom"):
        decode_dicom(bogus)


def test_compressed_syntax_without_plugin_names_the_plugin(tmp_path, ramp):
    from pydicom.encaps import encapsulate

    path = write_dicom(tmp_path / "ls.dcm", ramp, window=(2048, 4096))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8garbage\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomError) as info:
        decode_dicom(path)
    have_plugin = any(importlib.util.find_spec(m) for m in ("pylibjpeg", "gdcm", "jpeg_ls"))
    if not have_plugin:
        assert "pip install pylibjpeg" in str(info.value) and "JPEG-LS" in str(info.value)


def test_pydicom_shipped_files_native_and_rle_agree():
    from pydicom.data import get_testdata_file

    native = get_testdata_file("MR_small.dcm")
    rle = get_testdata_file("MR_small_RLE.dcm")
    if native is None or rle is None:
        pytest.skip("pydicom's shipped test files are not installed")
    ds = pydicom.dcmread(native)
    a, b = read_dicom(native), read_dicom(rle)
    assert np.array_equal(a, b)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = _window(ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1))
                       + float(ds.get("RescaleIntercept", 0)), c, w)
    assert np.array_equal(a, expected)


def test_is_dicom_by_suffix_and_marker(tmp_path, ramp):
    path = write_dicom(tmp_path / "noext", ramp)
    assert is_dicom(path)
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG")
    assert not is_dicom(png)


def test_fit_square_keeps_aspect_and_pads_with_black():
    img = np.full((50, 100), 200, dtype=np.uint8)
    out = fit_square(img, 20)
    assert out.shape == (20, 20)
    assert (out[:5] == 0).all() and (out[15:] == 0).all()
    assert (out[5:15] == 200).all()


def test_decode_image_png_16_bit_and_rgba_and_jpeg(tmp_path):
    from PIL import Image

    p16 = tmp_path / "a.png"
    arr = np.zeros((40, 40), dtype=np.uint16)
    arr[:, 20:] = 3000
    arr[:, :20] = 1000
    Image.fromarray(arr).save(p16)
    out, _ = decode_image(p16, 40)
    assert out[0, 0] == 0 and out[0, 39] == 255  # own range stretched
    rgba = tmp_path / "b.png"
    rgb = np.zeros((30, 30, 4), dtype=np.uint8)
    rgb[..., :3] = 120
    rgb[..., 3] = 10
    Image.fromarray(rgb, "RGBA").save(rgba)
    out, _ = decode_image(rgba, 30)
    assert int(out[15, 15]) == 120
    jpg = tmp_path / "c.jpg"
    Image.fromarray(np.full((400, 500), 90, dtype=np.uint8)).save(jpg, quality=95)
    out, _ = decode_image(jpg, 50)
    assert out.shape == (50, 50) and abs(int(out[25, 25]) - 90) <= 2 and out[0, 0] == 0


@pytest.mark.parametrize("kind", ["blank", "not a number", "zero width"])
def test_unusable_window_falls_back_to_stretch_without_warnings(tmp_path, kind, recwarn, caplog):
    px = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    if kind == "blank":
        path = write_dicom(tmp_path / "w.dcm", px, slope=2.0, intercept=10.0, window=("", ""))
    elif kind == "zero width":
        path = write_dicom(tmp_path / "w.dcm", px, slope=2.0, intercept=10.0, window=(300, 0))
    else:  # written as numbers, then the bytes overwritten (pydicom refuses to write them)
        path = write_dicom(tmp_path / "w.dcm", px, slope=2.0, intercept=10.0, window=(9999, 8888))
        raw = path.read_bytes()
        assert raw.count(b"9999") == 1 and raw.count(b"8888") == 1
        path.write_bytes(raw.replace(b"9999", b"abc ").replace(b"8888", b"n/a "))
    with caplog.at_level(logging.WARNING):
        got, inverted = decode_dicom(path)
    x = px * 2.0 + 10.0
    assert np.array_equal(got, np.rint((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8))
    assert not inverted and not caplog.records and not [w for w in recwarn if "pydicom" in w.filename]


def test_presentation_lut_shape_inverse_inverts_once(tmp_path, ramp):
    plain = read_dicom(write_dicom(tmp_path / "p.dcm", ramp, window=(2048, 4096)), warn=False)
    inv2, was2 = decode_dicom(write_dicom(tmp_path / "i2.dcm", ramp, window=(2048, 4096), presentation_lut_shape="INVERSE"))
    inv1, was1 = decode_dicom(
        write_dicom(tmp_path / "i1.dcm", ramp, window=(2048, 4096), photometric="MONOCHROME1",
                    presentation_lut_shape="INVERSE")
    )
    same, was_id = decode_dicom(write_dicom(tmp_path / "id.dcm", ramp, window=(2048, 4096), presentation_lut_shape="IDENTITY"))
    assert np.array_equal(inv2, 255 - plain) and was2
    assert np.array_equal(inv1, 255 - plain) and was1  # MONOCHROME1 + INVERSE: one inversion, not two
    assert np.array_equal(same, plain) and not was_id
