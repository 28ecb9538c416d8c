"""Loader throughput: vitmed's memmap batch loader vs decoding the source JPEG per item.

    python benchmarks/loader.py [--n 2000] [--size 224] [--batch 64]

vitmed: seeded permutation -> gather rows of the uint8 cache -> flip + rotation
(the CPU path: cached nearest-neighbour maps in a loader thread).  Baseline: the
straightforward per-item Dataset: PIL open + decode JPEG + resize + torchvision
RandomHorizontalFlip + RandomRotation(10) + ToTensor + Normalize.  Both in this
run, same images.  Also reported: vitmed including the model-input step
(normalise to 3 channels float), which on a GPU runs on the device.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image

from vitmed_cli.datasets.loader import BatchLoader
from vitmed_cli.inference import model_input


def _images(n: int, size: int, folder: Path, src: int) -> Path:
    rng = np.random.default_rng(0)
    cache = folder / "cache.npy"
    mm = open_memmap(cache, mode="w+", dtype=np.uint8, shape=(n, size, size))
    base = rng.normal(100, 30, (8, src, src)).clip(0, 255).astype(np.uint8)
    for i in range(n):
        img = base[i % 8]
        if i < 400:  # the baseline decodes a subset of the files
            Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)
        mm[i] = np.asarray(Image.fromarray(img).resize((size, size)))
    mm.flush()
    return cache


def bench_vitmed(cache: Path, n: int, batch: int, *, normalise: bool, epochs: int = 2) -> float:
    loader = BatchLoader(str(cache), np.arange(n), np.zeros((n, 14), np.float32), batch_size=batch,
                         shuffle=True, augment=True, seed=0, num_workers=1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for b in loader.iter_epoch(99):  # warm: page cache, rotation maps
        pass
    t = time.perf_counter()
    seen = 0
    for e in range(epochs):
        for b in loader.iter_epoch(e):
            if normalise:
                model_input(b.images, mean, std)
            seen += len(b.positions)
    return seen / (time.perf_counter() - t)


def bench_baseline(folder: Path, size: int, n_files: int) -> float:
    from torchvision import transforms as T

    tf = T.Compose([
        T.Resize((size, size)), T.RandomHorizontalFlip(), T.RandomRotation(10), T.ToTensor(),
        T.Normalize([0.485], [0.229]),
    ])
    files = [folder / f"{i}.jpg" for i in range(n_files)]
    for f in files[:20]:
        tf(Image.open(f).convert("L"))
    t = time.perf_counter()
    batch = []
    for f in files:
        x = tf(Image.open(f).convert("L")).expand(3, -1, -1)
        batch.append(x)
        if len(batch) == 64:
            torch.stack(batch)
            batch = []
    return len(files) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--source-size", type=int, default=1024, help="pixels of the JPEG files")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cache = _images(args.n, args.size, folder, args.source_size)
        fast = bench_vitmed(cache, args.n, args.batch, normalise=False)
        full = bench_vitmed(cache, args.n, args.batch, normalise=True)
        base = bench_baseline(folder, args.size, 400)
    print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, {args.size} px, "
          f"batch {args.batch}, {args.n} cached images, JPEG {args.source_size} px")
    print(f"vitmed loader + flip/rotation (uint8 batch)     : {fast:9.0f} images/s")
    print(f"  ... + normalise to 3-channel float (CPU)      : {full:9.0f} images/s")
    print(f"baseline: PIL decode + torchvision per item     : {base:9.0f} images/s")
    print(f"ratio vitmed / baseline                         : {fast / base:9.1f}x")
    print(f"target >= 3000 images/s                         : {'met' if fast >= 3000 else 'NOT met'}")


if __name__ == "__main__":
    main()
