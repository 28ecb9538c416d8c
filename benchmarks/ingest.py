"""Ingest throughput: 2048x2048 12-bit DICOMs and 2500x2000 JPEGs into the 224 px cache.

Run: python benchmarks/ingest.py [--n-dicom 300] [--n-jpeg 150] [--n-baseline 60] [--workers 2]

Writes the files into a temporary folder, ingests them with vitmed's code
path (``ingest_dataset`` on a csv listing the files: registry rows, worker
processes writing the memmap, registry updates), then runs a straightforward
single-process loop on the first ``--n-baseline`` of the same files in the
same run (the loop is slow; its rate per image is what is compared):

* DICOM: pydicom ``pixel_array`` -> float64 -> rescale -> 1st/99th percentile
  window -> PIL resize (aspect kept, padded) -> uint8.
* JPEG: PIL full-size decode -> grayscale -> PIL resize.

Both sides read files that were just written (warm page cache). Targets:
DICOM >= 150 images/s on 2 cores and >= 5x the loop.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitmed_cli.datasets.cache import fit_square  # noqa: E402
from vitmed_cli.datasets.dicom import write_dicom  # noqa: E402


def _bases(side_h: int, side_w: int, k: int = 4, seed: int = 0) -> list[np.ndarray]:
    """A few radiograph-like 12-bit images (smooth body, darker lungs, noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side_h, 0:side_w].astype(np.float32)
    y /= side_h
    x /= side_w
    out = []
    for _ in range(k):
        body = 2600 - 1400 * ((x - 0.5) ** 2 + (y - 0.55) ** 2)
        lungs = 900 * (np.exp(-(((x - 0.3) / 0.12) ** 2 + ((y - 0.45) / 0.25) ** 2))
                       + np.exp(-(((x - 0.7) / 0.12) ** 2 + ((y - 0.45) / 0.25) ** 2)))
        img = body - lungs + rng.normal(0, 60, size=(side_h, side_w)).astype(np.float32)
        out.append(np.clip(img, 0, 4095).astype(np.uint16))
    return out


def make_dicoms(folder: Path, n: int) -> list[Path]:
    bases = _bases(2048, 2048)
    paths = []
    for i in range(n):
        p = folder / f"dcm_{i:05d}.dcm"
        write_dicom(p, bases[i % len(bases)], bits_stored=12, slope=1.0, intercept=-1024.0,
                    window=(1000.0, 2600.0))
        paths.append(p)
    return paths


def make_jpegs(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    bases = [(b >> 4).astype(np.uint8) for b in _bases(2000, 2500, k=3, seed=1)]
    paths = []
    for i in range(n):
        p = folder / f"jpg_{i:05d}.jpg"
        Image.fromarray(bases[i % len(bases)]).save(p, quality=90)
        paths.append(p)
    return paths


def _csv(folder: Path, name: str, paths: list[Path]) -> Path:
    csv_path = folder / f"{name}.csv"
    with open(csv_path, "w") as fh:
        fh.write("path,patient_id,Finding\n")
        for i, p in enumerate(paths):
            fh.write(f"{p.name},P{i},{i % 2}\n")
    return csv_path


def vitmed_ingest(registry, csv_path: Path, name: str, size: int, workers: int) -> tuple[float, int]:
    from vitmed_cli.datasets.ingest import ingest_dataset

    t = time.perf_counter()
    summary = ingest_dataset(registry, "csv", csv_path, name=name, image_size=size, workers=workers)
    elapsed = time.perf_counter() - t
    if summary.n_unreadable:
        raise SystemExit(f"benchmark files unreadable: {summary.errors[:2]}")
    return elapsed, summary.n_ingested


def baseline_dicom(paths: list[Path], size: int) -> float:
    import pydicom

    out = np.zeros((len(paths), size, size), dtype=np.uint8)
    t = time.perf_counter()
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        arr = ds.pixel_array.astype(np.float64)
        arr = arr * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        lo, hi = np.percentile(arr, [1, 99])
        arr = np.clip((arr - lo) / (hi - lo), 0, 1) * 255
        out[i] = fit_square(arr.astype(np.uint8), size)
    return time.perf_counter() - t


def baseline_jpeg(paths: list[Path], size: int) -> float:
    from PIL import Image

    out = np.zeros((len(paths), size, size), dtype=np.uint8)
    t = time.perf_counter()
    for i, p in enumerate(paths):
        with Image.open(p) as img:
            out[i] = fit_square(img.convert("L"), size)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-dicom", type=int, default=300)
    ap.add_argument("--n-jpeg", type=int, default=150)
    ap.add_argument("--n-baseline", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()

    from vitmed_cli.registry.db import open_registry

    with tempfile.TemporaryDirectory(prefix="vitmed-bench-") as tmp:
        tmp = Path(tmp)
        os.environ["VITMED_HOME"] = str(tmp / "home")
        registry = open_registry(f"sqlite:///{tmp / 'registry.db'}")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"cpus: {os.cpu_count()}, workers: {args.workers}, cache size: {args.size}px, "
              f"load average before: {load:.1f}")

        t = time.perf_counter()
        dicoms = make_dicoms(tmp, args.n_dicom)
        print(f"wrote {len(dicoms)} DICOMs 2048x2048 12-bit ({time.perf_counter() - t:.1f}s)")
        v_s, n = vitmed_ingest(registry, _csv(tmp, "dicom", dicoms), "bench-dicom", args.size, args.workers)
        base = dicoms[: args.n_baseline]
        b_s = baseline_dicom(base, args.size)
        v_rate, b_rate = n / v_s, len(base) / b_s
        print(f"DICOM vitmed ingest : {v_rate:7.1f} images/s ({n} in {v_s:.2f}s, registry included)")
        print(f"DICOM baseline loop : {b_rate:7.1f} images/s ({len(base)} in {b_s:.2f}s, 1 process)")
        print(f"DICOM speed-up      : {v_rate / b_rate:7.1f}x   (targets: >= 150 images/s, >= 5x)")

        t = time.perf_counter()
        jpegs = make_jpegs(tmp, args.n_jpeg)
        print(f"wrote {len(jpegs)} JPEGs 2500x2000 ({time.perf_counter() - t:.1f}s)")
        v_s, n = vitmed_ingest(registry, _csv(tmp, "jpeg", jpegs), "bench-jpeg", args.size, args.workers)
        base = jpegs[: args.n_baseline]
        b_s = baseline_jpeg(base, args.size)
        v_rate, b_rate = n / v_s, len(base) / b_s
        print(f"JPEG  vitmed ingest : {v_rate:7.1f} images/s ({n} in {v_s:.2f}s, draft decoding)")
        print(f"JPEG  baseline loop : {b_rate:7.1f} images/s (full decode, 1 process)")
        print(f"JPEG  speed-up      : {v_rate / b_rate:7.1f}x")
        registry.dispose()


if __name__ == "__main__":
    main()
