"""Memory and time per image at 224 / 512 / 1024 px: a training step (full fine-tune), a frozen
forward pass (what a linear probe's features cost) and the image cache, per architecture.

    python benchmarks/resolution.py [--arch vit_base_patch16_224 convnext_base] [--sizes 224 512 1024]

Each (architecture, size) runs in a fresh process, so its peak memory is its own: on the CPU
the peak resident set size above the process's size with the model built; on a GPU
``torch.cuda.max_memory_allocated``.  Times are the median of 3 steps after one warm-up (one
step at 1024 px), as
vitmed runs them (``Trainer.step`` with AdamW; ``inference.autocast`` for the forward pass: bf16
on a GPU).  The baseline in the same run is the 224 px row: the other sizes are reported as
multiples of it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _one(arch: str, size: int, batch: int, device: str) -> dict:
    import numpy as np
    import torch

    from vitmed_cli.inference import autocast
    from vitmed_cli.models import create_model
    from vitmed_cli.training import Trainer

    dev = torch.device(device)
    model, _ = create_model(arch, 14, size)
    trainer = Trainer(model, pos_weight=np.ones(14, np.float32), device=dev, total_steps=100)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = (torch.rand(batch, 14, device=dev) < 0.3).float()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()

    repeats = 3 if size <= 512 else 1  # a 1024 px ViT-B step takes a minute on 2 CPU cores

    def timed(fn) -> float:
        if repeats > 1:
            fn()  # warm-up
        out = []
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t)
        return sorted(out)[len(out) // 2]

    step = timed(lambda: trainer.step(x, y))
    peak_train = (torch.cuda.max_memory_allocated() / 1e6 if dev.type == "cuda"
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3 - base)

    @torch.no_grad()
    def forward():
        model.eval()
        with autocast(dev):
            model.forward_head(model.forward_features(x), pre_logits=True)

    fwd = timed(forward)
    return {"arch": arch, "size": size, "batch": batch, "device": device,
            "train_s_per_image": step / batch, "forward_s_per_image": fwd / batch,
            "train_peak_mb": peak_train, "cache_kb_per_image": size * size / 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", nargs="+", default=["vit_base_patch16_224", "convnext_base.dinov3_lvd1689m"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 1024])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        arch, size = args.one.rsplit(":", 1)
        print(json.dumps(_one(arch, int(size), args.batch, args.device)))
        return
    import torch

    device = args.device if args.device != "cuda" or torch.cuda.is_available() else "cpu"
    print(f"device: {device}, cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
          f"batch {args.batch}, 14 findings")
    print(f"{'arch':28s} {'px':>5s} {'train s/img':>12s} {'x224':>6s} {'forward s/img':>14s} {'x224':>6s} "
          f"{'train peak MB':>14s} {'cache KB/img':>13s}")
    for arch in args.arch:
        base = None
        for size in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--one", f"{arch}:{size}", "--batch",
                                  str(args.batch), "--device", device], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{arch:28s} {size:5d} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            base = base or r
            print(f"{arch:28s} {size:5d} {r['train_s_per_image']:12.3f} "
                  f"{r['train_s_per_image'] / base['train_s_per_image']:6.1f} {r['forward_s_per_image']:14.3f} "
                  f"{r['forward_s_per_image'] / base['forward_s_per_image']:6.1f} {r['train_peak_mb']:14.0f} "
                  f"{r['cache_kb_per_image']:13.0f}")


if __name__ == "__main__":
    main()
