"""Linear probes: features once + N probe seeds vs N end-to-end frozen-backbone runs, same data.

    python benchmarks/probe.py [--images 1000] [--size 64] [--epochs 5] [--seeds 10]

Both arms go through ``vitmed_cli.training.finetune`` on one registry: ``tune="head"``
(the first run computes and stores every image's backbone features, the others read
them back) and ``tune="head", feature_cache=False`` (every run pushes every image of
every epoch through the frozen backbone).  Same backbone (a registered initialisation:
ViT depth 6, dim 192, patch 8), same seeds, data order, epochs and validation.  Prints
the wall time of each arm, the ratio (goal >= 8x) and how far apart the two arms'
heads ended (they train the same head).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from numpy.lib.format import open_memmap
from safetensors.torch import load_file, save_file

KW = {"patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3}
FINDINGS = ("Effusion", "Nodule", "Cardiomegaly")


def _dataset(registry, folder: Path, n: int, size: int) -> None:
    """n images with finding k a bright blob in band k, split 60/20/20, straight into the registry."""
    from vitmed_cli.registry.models import Dataset, Finding, Image, Label, Split, SplitAssignment

    rng = np.random.default_rng(0)
    y = (rng.random((n, len(FINDINGS))) < 0.35).astype(int)
    cache = folder / "cache.npy"
    mm = open_memmap(cache, mode="w+", dtype=np.uint8, shape=(n, size, size))
    band = size // len(FINDINGS)
    yy, xx = np.ogrid[:size, :size]
    for i in range(n):
        img = rng.normal(70, 12, (size, size))
        for j in np.flatnonzero(y[i]):
            cy, cx = j * band + band // 2, size // 2 + rng.integers(-size // 4, size // 4)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 10) ** 2] = 230
        mm[i] = img.clip(0, 255).astype(np.uint8)
    mm.flush()
    parts = np.where(np.arange(n) < 0.6 * n, "train", np.where(np.arange(n) < 0.8 * n, "val", "test"))
    with registry.session() as s:
        ds = Dataset(name="bench", format="synthetic", source_path=str(folder), image_size=size,
                     cache_path=str(cache))
        s.add(ds)
        s.flush()
        fs = [Finding(dataset_id=ds.id, canonical=f, native=f, position=i) for i, f in enumerate(FINDINGS)]
        sp = Split(dataset_id=ds.id, name="s", method="random", seed=0)
        s.add_all([*fs, sp])
        s.flush()
        images = [Image(dataset_id=ds.id, key=f"i{i}", patient_id=f"p{i}", view="frontal", source_path="-",
                        cache_index=i, readable=True) for i in range(n)]
        s.add_all(images)
        s.flush()
        s.add_all([Label(image_id=images[i].id, finding_id=fs[j].id, value=int(y[i, j]))
                   for i in range(n) for j in range(len(FINDINGS))])
        s.add_all([SplitAssignment(split_id=sp.id, image_id=images[i].id, part=str(parts[i])) for i in range(n)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VITMED_HOME"] = tmp
        from vitmed_cli.registry.db import open_registry
        from vitmed_cli.training import finetune
        from vitmed_cli.weights import pretrain_load

        reg = open_registry(f"sqlite:///{tmp}/registry.db", home=tmp)
        _dataset(reg, Path(tmp), args.images, args.size)
        torch.manual_seed(0)
        backbone = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                                     img_size=args.size, **KW)
        save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, f"{tmp}/backbone.safetensors")
        pretrain_load(reg, "file", file=f"{tmp}/backbone.safetensors", arch="vit_tiny_patch16_224",
                      model_kwargs=KW, name="backbone")
        common = dict(dataset="bench", init="backbone", epochs=args.epochs, lr=1e-2, batch_size=32,
                      tune="head", num_workers=1)
        t = time.perf_counter()
        probes = [finetune(reg, seed=s, **common) for s in range(args.seeds)]
        t_probe = time.perf_counter() - t
        t = time.perf_counter()
        e2e = [finetune(reg, seed=s, feature_cache=False, **common) for s in range(args.seeds)]
        t_e2e = time.perf_counter() - t
        diff = max(float((load_file(a.checkpoints["last"])["head.weight"]
                          - load_file(b.checkpoints["last"])["head.weight"]).abs().max())
                   for a, b in zip(probes, e2e))
        with reg.session() as s:
            from vitmed_cli.registry.models import Run

            first = s.get(Run, probes[0].run_id).config["feature_cache"]
            later = s.get(Run, probes[-1].run_id).config["feature_cache"]
        reg.dispose()
    n_used = first["computed"]
    print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}; ViT depth 6, dim 192, patch 8 "
          f"at {args.size} px; {args.images} images ({n_used} train+val), {args.epochs} epochs, "
          f"{args.seeds} seeds")
    print(f"features once (first probe)              : {first['seconds']:8.2f} s for {first['computed']} images")
    print(f"later probes: features computed / reused : {later['computed']} / {later['reused']}")
    print(f"features once + {args.seeds} probes (head on stored): {t_probe:8.2f} s")
    print(f"{args.seeds} end-to-end frozen-backbone runs      : {t_e2e:8.2f} s")
    ratio = t_e2e / t_probe
    print(f"ratio                                    : {ratio:8.1f}x (goal >= 8x: {'met' if ratio >= 8 else 'NOT met'})")
    print(f"largest head weight difference, probe vs end to end, same seed: {diff:.2e}")


if __name__ == "__main__":
    main()
