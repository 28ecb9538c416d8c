"""study run with the local executor: jobs forked from a pre-loaded process vs a fresh interpreter each.

    python benchmarks/local_executor.py [--seeds 2] [--epochs 3] [--full]

Runs the same demo study twice, each in a fresh workspace and registry: once with
``LocalExecutor(preload=False)`` (every fine-tuning job a new ``python -m vitmed_cli study cell``
interpreter, which imports torch, timm and torchvision before its cell begins) and once with the
default (jobs forked from a forkserver that imported torch and timm once).  The light cells run
in this process either way.  Prints both wall times, the ratio, and checks the two arms stored the
same macro AUCs.  ``--full`` uses the demo's default sizes (minutes); the default is the smallest
demo (seconds per cell), where start-up is most of a cell.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from vitmed_cli.registry.db import open_registry
from vitmed_cli.registry.models import Evaluation
from vitmed_cli.study import DemoSettings, demo_study_text, load_study
from vitmed_cli.study.executors import LocalExecutor
from vitmed_cli.study.run import run_study


def _arm(folder: Path, settings: DemoSettings, seeds: list[int], preload: bool) -> tuple[float, list[float]]:
    folder.mkdir(parents=True)
    study = folder / "study.toml"
    study.write_text(demo_study_text(settings, seeds=seeds, name="bench", report_out=str(folder / "report.md")))
    url = f"sqlite:///{folder / 'registry.db'}"
    registry = open_registry(url, home=folder / "home")
    try:
        started = time.perf_counter()
        result = run_study(registry, load_study(study), executor=LocalExecutor(gpus=[], preload=preload),
                           db_url=url)
        seconds = time.perf_counter() - started
        assert not result.failed, result.failed
        with registry.session(readonly=True) as s:
            aucs = [round(e.macro_auc, 6) for e in s.scalars(select(Evaluation).order_by(Evaluation.id))]
    finally:
        registry.dispose()
    return seconds, aucs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="the demo's default sizes instead of the smallest")
    args = ap.parse_args()
    settings = DemoSettings() if args.full else dataclasses.replace(
        DemoSettings.smallest(), source_epochs=args.epochs, target_epochs=args.epochs, n_resamples=200)
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        fresh, aucs_fresh = _arm(Path(tmp) / "fresh", settings, seeds, preload=False)
        forked, aucs_forked = _arm(Path(tmp) / "forked", settings, seeds, preload=True)
    n_jobs = 1 + 2 * len(seeds)
    print(f"demo study ({'default' if args.full else 'smallest'} sizes, {len(seeds)} seed(s), {n_jobs} fine-tuning jobs)")
    print(f"  fresh interpreter per job : {fresh:7.1f} s")
    print(f"  forked from preloaded     : {forked:7.1f} s")
    print(f"  ratio                     : {fresh / forked:7.2f}x")
    print(f"  same macro AUCs           : {aucs_fresh == aucs_forked} ({aucs_forked})")


if __name__ == "__main__":
    main()
