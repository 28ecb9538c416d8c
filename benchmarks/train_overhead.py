"""Training-step overhead: vitmed's ``Trainer.step`` vs a bare timm + PyTorch loop.

    python benchmarks/train_overhead.py [--steps 30] [--size 64] [--batch 32]

Same architecture, same initial weights, same prepared batches, in one run; the
two loops are interleaved in rounds so machine load hits both alike.  Target:
vitmed reaches >= 0.9 of the bare loop's images/s.  Also reported: vitmed's
whole epoch path (memmap loader + augmentation + model input + step).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from numpy.lib.format import open_memmap

from vitmed_cli.datasets.loader import BatchLoader
from vitmed_cli.inference import model_input, model_norm
from vitmed_cli.training import Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="steps per loop (in rounds of 5)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--findings", type=int, default=14)
    args = ap.parse_args()
    torch.manual_seed(0)
    kw = dict(patch_size=8, embed_dim=192, depth=6, num_heads=3)
    base = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=args.findings,
                             img_size=args.size, **kw)
    rng = np.random.default_rng(0)
    n_batches = 5
    xs = [torch.randn(args.batch, 3, args.size, args.size) for _ in range(n_batches)]
    ys = [torch.from_numpy((rng.random((args.batch, args.findings)) < 0.3).astype(np.float32))
          for _ in range(n_batches)]
    pos_weight = np.full(args.findings, 2.0, np.float32)

    vit_model = copy.deepcopy(base)
    trainer = Trainer(vit_model, pos_weight=pos_weight, lr=1e-5, weight_decay=0.01, device="cpu",
                      total_steps=10_000)
    bare = copy.deepcopy(base).train()
    opt = torch.optim.AdamW(bare.parameters(), lr=1e-5, weight_decay=0.01)
    crit = torch.nn.BCEWithLogitsLoss(pos_weight=torch.from_numpy(pos_weight))

    def bare_step(x, y):
        loss = crit(bare(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    for i in range(3):  # warm-up both
        trainer.step(xs[i], ys[i])
        bare_step(xs[i], ys[i])
    t_v = t_b = 0.0
    rounds = max(1, args.steps // n_batches)
    for r in range(rounds):
        order = [("v", trainer.step), ("b", bare_step)] if r % 2 == 0 else [("b", bare_step), ("v", trainer.step)]
        for name, fn in order:
            t = time.perf_counter()
            for x, y in zip(xs, ys):
                fn(x, y)
            dt = time.perf_counter() - t
            if name == "v":
                t_v += dt
            else:
                t_b += dt
    n_img = rounds * n_batches * args.batch
    ips_v, ips_b = n_img / t_v, n_img / t_b

    # whole path: loader + augmentation + model input + step, on a cache of the same size
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "c.npy"
        n = args.batch * n_batches * 2
        mm = open_memmap(cache, mode="w+", dtype=np.uint8, shape=(n, args.size, args.size))
        mm[:] = rng.integers(0, 255, mm.shape, dtype=np.uint8)
        mm.flush()
        y_all = (rng.random((n, args.findings)) < 0.3).astype(np.float32)
        loader = BatchLoader(str(cache), np.arange(n), y_all, batch_size=args.batch, shuffle=True,
                             augment=True, num_workers=1)
        mean, std = model_norm(vit_model)
        t = time.perf_counter()
        seen = 0
        for b in loader.iter_epoch(0):
            trainer.step(model_input(b.images, mean, std), b.targets)
            seen += len(b.positions)
        ips_full = seen / (time.perf_counter() - t)

    print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}; ViT (depth 6, dim 192, "
          f"patch 8) at {args.size} px, batch {args.batch}, {args.findings} findings, {n_img} images per loop")
    print(f"bare timm + PyTorch loop           : {ips_b:8.1f} images/s")
    print(f"vitmed Trainer.step                : {ips_v:8.1f} images/s")
    print(f"ratio vitmed / bare                : {ips_v / ips_b:8.3f} (target >= 0.9: "
          f"{'met' if ips_v / ips_b >= 0.9 else 'NOT met'})")
    print(f"vitmed whole path (loader+aug+step): {ips_full:8.1f} images/s ({ips_full / ips_b:.3f} of bare)")


if __name__ == "__main__":
    main()
