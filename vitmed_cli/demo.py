"""The whole study in miniature, on synthetic data, on a laptop CPU: the ``demo`` study preset.

:func:`run_demo` writes the demo's study file (:func:`vitmed_cli.study.demo_study_text`,
one seed) into a fresh folder and runs it in this process, through the same cells as
``vitmed study run``:

1. ingest a synthetic *source* dataset (standing in for MIMIC-CXR) and a
   smaller *target* dataset (standing in for VinDr-CXR), split both by patient;
2. fine-tune a small ViT on the source and register its best checkpoint as an
   initialisation (the study's in-domain supervised init);
3. fine-tune on the target from ``random``, from that source init, and from a
   DINOv2-format file when one is given;
4. predict the target test part with each run and compare each init with ``random``
   (paired bootstrap + DeLong, Benjamini-Hochberg adjusted);
5. write the study's HTML report.

The registry and workspace live under one folder, so the result can be
explored with ``vitmed --db DIR/registry.db runs list`` and friends.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from .errors import ConfigError
from .events import Listener
from .registry.db import Registry, open_registry
from .registry.models import MACRO, Comparison
from .study import cell_states, load_study, run_study
from .study.presets import SOURCE, SOURCE_INIT, TARGET, DemoSettings, demo_study_text

STUDY_FILE = "demo-study.toml"


@dataclass
class DemoResult:
    out_dir: str
    registry_url: str
    report_path: str
    study_file: str
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
    study_file = out_dir / STUDY_FILE
    study_file.write_text(demo_study_text(s, seeds=[s.seed], dinov2_file=dinov2_file, report_out="report.html"),
                          encoding="utf-8")
    spec = load_study(study_file)
    # Checkpoints, cache and report go under the demo folder, next to its registry.
    url = f"sqlite:///{db_file}"
    registry: Registry = open_registry(url, home=out_dir)
    started = time.perf_counter()
    try:
        result = run_study(registry, spec, executor=None, on_event=on_event)
        states = {st.key: st for st in cell_states(registry, spec)}
        if result.failed:
            key, error = next(iter(result.failed.items()))
            raise ConfigError(f"demo cell {key} failed: {error.splitlines()[0]} - see vitmed --db {url} "
                              f"study status {study_file}")
        inits = [i for i in spec.inits]
        runs = {i: states[f"finetune/{TARGET}/{i}/{s.seed}"].run_id for i in inits}
        evals = {i: states[f"predict/{TARGET}/{i}/{s.seed}"].evaluation_id for i in inits}
        compare_ids = [st.comparison_id for st in states.values() if st.stage == "compare"]
        return DemoResult(
            out_dir=str(out_dir), registry_url=url, report_path=str(Path(spec.report.out)),
            study_file=str(study_file), source_run_id=states[f"finetune/{SOURCE_INIT}"].run_id,
            target_run_ids=runs, evaluation_ids=evals,
            comparison=stored_comparisons(registry, compare_ids, alpha=spec.statistics.alpha),
            seconds=round(time.perf_counter() - started, 1),
        )
    finally:
        registry.dispose()


def stored_comparisons(registry: Registry, comparison_ids: list[int], *, alpha: float) -> dict[str, Any]:
    """Stored comparisons in the shape :func:`vitmed_cli.compare.compare` returns them."""
    pairs = []
    n_resamples = seed = None
    with registry.session(readonly=True) as s:
        for cmp in s.scalars(select(Comparison).where(Comparison.id.in_(comparison_ids)).order_by(Comparison.id)):
            n_resamples, seed = cmp.n_resamples, cmp.seed
            rows = []
            for r in cmp.results:
                row = {k: getattr(r, k) for k in ("finding", "auc_a", "auc_b", "diff", "ci_low", "ci_high",
                                                  "p_value", "p_delong", "p_adjusted", "n_positive",
                                                  "n_negative", "n_degenerate")}
                sig = row["p_adjusted"] is not None and row["p_adjusted"] < alpha and row["diff"]
                row["better"] = (cmp.label_a if row["diff"] > 0 else cmp.label_b) if sig else None
                rows.append(row)
            opts = cmp.options or {}
            pairs.append({
                "comparison_id": cmp.id, "a": cmp.label_a, "b": cmp.label_b, "evaluation_a": cmp.evaluation_a_id,
                "evaluation_b": cmp.evaluation_b_id, "tune_a": opts.get("tune_a"), "tune_b": opts.get("tune_b"),
                "n_images": cmp.n_images, "findings": [r for r in rows if r["finding"] != MACRO],
                "macro": next(r for r in rows if r["finding"] == MACRO),
                "skipped_findings": opts.get("skipped_findings") or [],
                "n_dropped_images": opts.get("n_dropped_images", 0),
                "n_label_conflicts": opts.get("n_label_conflicts", 0), "warnings": opts.get("warnings") or [],
            })
    return {"alpha": alpha, "n_resamples": n_resamples, "seed": seed, "pairs": pairs}


__all__ = ["DemoResult", "DemoSettings", "SOURCE", "SOURCE_INIT", "TARGET", "run_demo", "stored_comparisons"]
