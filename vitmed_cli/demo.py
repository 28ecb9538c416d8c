"""The whole study in miniature, on synthetic data, on a laptop CPU.

:func:`run_demo` does what a user does on real data, through the same library
functions the commands call:

1. ingest a synthetic *source* dataset (standing in for MIMIC-CXR) and a
   smaller *target* dataset (standing in for VinDr-CXR), split both by patient;
2. fine-tune a small ViT on the source and register its best checkpoint as an
   initialisation (the study's in-domain supervised init);
3. fine-tune on the target from ``random``, from that source init, and from a
   DINOv2-format file when one is given;
4. predict the target test part with each run and compare the
   initialisations (paired bootstrap + DeLong, Benjamini-Hochberg adjusted);
5. write the HTML report.

The registry and workspace live under one folder, so the result can be
explored with ``vitmed --db DIR/registry.db runs list`` and friends.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .choices import DEFAULT_RESAMPLES
from .compare import compare
from .datasets.ingest import ingest_dataset
from .errors import ConfigError
from .evaluations import predict
from .events import Listener, notice
from .registry.db import Registry, open_registry
from .report import create_report
from .splits import make_split
from .training import finetune
from .weights import pretrain_load

SOURCE, TARGET = "demo-source", "demo-target"
SOURCE_INIT = "demo-source-supervised"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo; the defaults finish in about three minutes on 2 CPU cores."""

    n_source: int = 800
    n_target: int = 640
    image_size: int = 64
    source_epochs: int = 30
    target_epochs: int = 30
    # The target training part is kept small on purpose: with few labelled images
    # a good initialisation matters most, as in the study's smaller datasets.
    target_val: float = 0.15
    target_test: float = 0.55
    batch_size: int = 32
    source_lr: float = 1e-3
    # Fine-tuning keeps a lower rate, the same for every initialisation (as in the study),
    # so that pretrained features are adapted rather than overwritten.
    lr: float = 3e-4
    # A ViT trained from scratch needs warm-up; the study's constant rate assumed pretrained weights.
    scheduler: str = "cosine"
    # Flips as in the study, but no rotation: the synthetic images have no pose variation to
    # learn invariance to, and at 64 px a rotation costs the tiny ViT most of its signal.
    rotation: float = 0.0
    seed: int = 0
    n_resamples: int = DEFAULT_RESAMPLES
    arch: str = "vit_tiny_patch16_224"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
    )

    @classmethod
    def smallest(cls) -> "DemoSettings":
        """Seconds, not minutes: for tests; too small for the p-value to mean much."""
        return cls(n_source=160, n_target=160, image_size=32, source_epochs=2, target_epochs=2,
                   n_resamples=200, model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 1,
                                                  "num_heads": 2})


@dataclass
class DemoResult:
    out_dir: str
    registry_url: str
    report_path: str
    source_run_id: int
    target_run_ids: dict[str, int]
    evaluation_ids: dict[str, int]
    comparison: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_demo(
    out_dir: Path,
    settings: DemoSettings | None = None,
    *,
    dinov2_file: Path | None = None,
    on_event: Listener | None = None,
) -> DemoResult:
    """Run the miniature study in ``out_dir`` (a fresh registry and workspace there).

    ``on_event`` receives each step as a notice and the progress of long work.
    """
    s = settings or DemoSettings()
    out_dir = Path(out_dir).expanduser().resolve()
    db_file = out_dir / "registry.db"
    if db_file.exists():
        raise ConfigError(
            f"{db_file} already exists - the demo starts from a fresh registry: "
            "choose another `out` folder or delete that one"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # Checkpoints, cache and report go under the demo folder, next to its registry.
    url = f"sqlite:///{db_file}"
    registry: Registry = open_registry(url, home=out_dir)
    started = time.perf_counter()
    common = dict(arch=s.arch, image_size=s.image_size, batch_size=s.batch_size, lr=s.lr,
                  scheduler=s.scheduler, rotation=s.rotation,
                  seed=s.seed, device="auto", model_kwargs=dict(s.model_kwargs), on_event=on_event)
    try:
        notice(on_event, "1/5 ingest two synthetic datasets and split them by patient")
        for name, flavour, n, seed in ((SOURCE, "source", s.n_source, s.seed),
                                       (TARGET, "target", s.n_target, s.seed + 1)):
            ingest_dataset(registry, "synthetic", out_dir / "data" / name, name=name,
                           image_size=s.image_size, n_images=n, seed=seed, flavour=flavour,
                           on_event=on_event)
        make_split(registry, SOURCE, val=0.15, test=0.15, seed=s.seed, name="demo")
        make_split(registry, TARGET, val=s.target_val, test=s.target_test, seed=s.seed, name="demo")

        notice(on_event, "2/5 fine-tune on the source and register it as an initialisation")
        src = finetune(registry, dataset=SOURCE, init="random", split="demo",
                       epochs=s.source_epochs, **{**common, "lr": s.source_lr})
        _require_completed(src)
        pretrain_load(registry, f"run:{src.run_id}", name=SOURCE_INIT)

        notice(on_event, "3/5 fine-tune on the target from each initialisation")
        inits = ["random", SOURCE_INIT]
        if dinov2_file is not None:
            pretrain_load(registry, "dinov2", file=dinov2_file)
            inits.append("dinov2")
        runs: dict[str, int] = {}
        for init in inits:
            kwargs = dict(common)
            if init == "dinov2":
                # A real DINOv2 file brings its own architecture (ViT-B/14: slow on a CPU).
                kwargs.update(arch=None, model_kwargs=None)
            res = finetune(registry, dataset=TARGET, init=init, split="demo",
                           epochs=s.target_epochs, **kwargs)
            _require_completed(res)
            runs[init] = res.run_id

        notice(on_event, "4/5 predict the target test part and compare the initialisations")
        evals = {init: predict(registry, run_id=rid, part="test").evaluation_id
                 for init, rid in runs.items()}
        result = compare(registry, dataset=TARGET, inits=inits,
                         n_resamples=s.n_resamples, seed=s.seed, on_event=on_event)

        notice(on_event, "5/5 write the report")
        written = create_report(registry, out_dir / "report.html", fmt="html",
                                n_resamples=s.n_resamples, seed=s.seed, on_event=on_event)
        return DemoResult(
            out_dir=str(out_dir), registry_url=url, report_path=str(written.path),
            source_run_id=src.run_id, target_run_ids=runs, evaluation_ids=evals,
            comparison=result, seconds=round(time.perf_counter() - started, 1),
        )
    finally:
        registry.dispose()


def _require_completed(result) -> None:
    if result.status != "completed":
        raise ConfigError(
            f"demo run {result.run_id} ended {result.status}: {result.message or ''} - "
            f"see vitmed runs show {result.run_id}"
        )


__all__ = ["DemoResult", "DemoSettings", "run_demo"]
