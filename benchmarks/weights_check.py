"""How long pretrain-load's strict check of a DINOv2 ViT-B file takes.

vitmed checks a weights file on a ``meta``-device model (shapes and names only,
no memory, no random initialisation).  The baseline is the straightforward way:
build the real timm model and ``load_state_dict(strict=True)``.  Both read the
same file (torch.load weights_only) and both run timm's DINOv2 converter.

Run: python benchmarks/weights_check.py [--arch vit_base_patch14_dinov2.lvd142m] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch

from vitmed_cli import models, weights


def _timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_base_patch14_dinov2.lvd142m")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dinov2_pretrain.pth"
        model = timm.create_model(args.arch, pretrained=False, num_classes=0)
        sd = model.state_dict()
        sd["mask_token"] = torch.zeros(1, model.embed_dim)  # as in the official release file
        torch.save(sd, path)
        del model
        size_mb = path.stat().st_size / 1e6

        t_read = _timed(lambda: weights.read_state_dict(path), args.repeat)
        t_hash = _timed(lambda: weights.sha256_file(path), args.repeat)
        t_check = _timed(lambda: models.check_weights(weights.read_state_dict(path), args.arch), args.repeat)

        def baseline() -> None:
            state = weights.read_state_dict(path)
            real = timm.create_model(args.arch, pretrained=False, num_classes=0)
            real.load_state_dict(models.fit_state_dict(state, real)[0], strict=True)

        t_base = _timed(baseline, args.repeat)

    print(f"file: {args.arch}, {size_mb:.0f} MB, median of {args.repeat}")
    print(f"  read (torch.load weights_only): {t_read:6.2f} s")
    print(f"  sha256:                         {t_hash:6.2f} s  ({size_mb / t_hash:.0f} MB/s)")
    print(f"  vitmed check (meta model):      {t_check:6.2f} s")
    print(f"  baseline (real model + strict): {t_base:6.2f} s")
    print(f"  speed-up of the check: {t_base / t_check:.1f}x")


if __name__ == "__main__":
    main()
