"""GPU throughput: ViT-B/14 at 224 px in bf16, vitmed's training step vs the bare loop,
and whether the loader keeps the GPU fed.

    python benchmarks/gpu_throughput.py [--batch 128] [--steps 30] [--compile]

Same model (vit_base_patch14_dinov2 architecture, random weights), same batches,
channels_last, bf16 autocast (fp16 + scaler where bf16 is missing).  The bare
loop is the textbook timm + PyTorch step.  The loader is measured alone (memmap
gather -> pinned buffer -> non-blocking copy -> flip/rotation and normalisation
on the GPU) and must deliver more images/s than the step consumes.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--arch", default="vit_base_patch14_dinov2.lvd142m")
    ap.add_argument("--cache-images", type=int, default=8192)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible - gpu_throughput.py measures a GPU; run it on a machine with one "
                 "(see benchmarks/README.md for the last recorded numbers)")
    import timm
    from numpy.lib.format import open_memmap

    from vitmed_cli.datasets.loader import BatchLoader
    from vitmed_cli.inference import amp_dtype_for, model_input, model_norm
    from vitmed_cli.training import Trainer

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    k = 14
    base = timm.create_model(args.arch, pretrained=False, num_classes=k, img_size=args.size)
    mean, std = model_norm(base)
    amp = amp_dtype_for(dev)
    xs = [torch.randn(args.batch, 3, args.size, args.size, device=dev).contiguous(
        memory_format=torch.channels_last) for _ in range(4)]
    ys = [(torch.rand(args.batch, k, device=dev) < 0.3).float() for _ in range(4)]
    pw = np.full(k, 2.0, np.float32)

    trainer = Trainer(copy.deepcopy(base), pos_weight=pw, lr=1e-5, device=dev, total_steps=10**6,
                      compile=args.compile)
    bare = copy.deepcopy(base).to(dev, memory_format=torch.channels_last).train()
    net = torch.compile(bare) if args.compile else bare
    opt = torch.optim.AdamW(bare.parameters(), lr=1e-5, weight_decay=0.01)
    crit = torch.nn.BCEWithLogitsLoss(pos_weight=torch.from_numpy(pw).to(dev))
    scaler = torch.amp.GradScaler("cuda") if amp is torch.float16 else None

    def bare_step(x, y):
        with torch.autocast("cuda", dtype=amp):
            loss = crit(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss.detach()

    def timed(fn, steps):
        for i in range(5):
            fn(xs[i % 4], ys[i % 4])
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(steps):
            fn(xs[i % 4], ys[i % 4])
        torch.cuda.synchronize()
        return steps * args.batch / (time.perf_counter() - t)

    ips_bare1 = timed(bare_step, args.steps)
    ips_vit = timed(trainer.step, args.steps)
    ips_bare2 = timed(bare_step, args.steps)
    ips_bare = (ips_bare1 + ips_bare2) / 2

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "c.npy"
        n = args.cache_images
        mm = open_memmap(cache, mode="w+", dtype=np.uint8, shape=(n, args.size, args.size))
        rng = np.random.default_rng(0)
        for i in range(0, n, 512):
            mm[i:i + 512] = rng.integers(0, 255, (min(512, n - i), args.size, args.size), dtype=np.uint8)
        mm.flush()
        del mm
        y_all = (rng.random((n, k)) < 0.3).astype(np.float32)
        loader = BatchLoader(str(cache), np.arange(n), y_all, batch_size=args.batch, shuffle=True,
                             augment=True, device=dev, num_workers=2, prefetch=6)
        for b in loader.iter_epoch(99):
            model_input(b.images, mean, std, channels_last=True)
        torch.cuda.synchronize()
        t = time.perf_counter()
        seen = 0
        for b in loader.iter_epoch(0):
            model_input(b.images, mean, std, channels_last=True)
            seen += len(b.positions)
        torch.cuda.synchronize()
        ips_loader = seen / (time.perf_counter() - t)
        # the real loop: loader + model input + vitmed step
        t = time.perf_counter()
        seen = 0
        for j, b in enumerate(loader.iter_epoch(1)):
            if j >= args.steps:
                break
            trainer.step(model_input(b.images, mean, std, channels_last=True), b.targets)
            seen += len(b.positions)
        torch.cuda.synchronize()
        ips_full = seen / (time.perf_counter() - t)

    name = torch.cuda.get_device_name(0)
    print(f"GPU: {name}; torch {torch.__version__}; {args.arch} at {args.size} px, batch {args.batch}, "
          f"{amp}, channels_last{', compiled' if args.compile else ''}")
    print(f"bare timm + PyTorch loop        : {ips_bare:8.1f} images/s")
    print(f"vitmed Trainer.step             : {ips_vit:8.1f} images/s (ratio {ips_vit / ips_bare:.3f})")
    print(f"vitmed loader alone (GPU aug)   : {ips_loader:8.1f} images/s "
          f"({'keeps up' if ips_loader > ips_vit else 'DOES NOT keep up'}: {ips_loader / ips_vit:.1f}x the step)")
    print(f"vitmed loader + step (real loop): {ips_full:8.1f} images/s ({ips_full / ips_bare:.3f} of bare)")


if __name__ == "__main__":
    main()
