"""The study's statistics stage: one init against the reference over seeds, and the FDR family.

:func:`compare_inits` is the one place the study calls the comparison engine: with
``compare_over_seeds`` (one p-value per finding from resamples that average each init's AUC
over its seeds) when vitmed has it, else one paired comparison per seed.
"""

from __future__ import annotations

from typing import Any

from .. import compare as engine
from ..events import Listener
from ..registry.db import Registry
from .spec import StatisticsSpec, StudySpec


def compare_inits(registry: Registry, *, evaluations_a: list[int], evaluations_b: list[int], label_a: str,
                  label_b: str, seeds: list[int], statistics: StatisticsSpec,
                  on_event: Listener | None = None) -> dict[str, Any]:
    """Compare init A (``evaluations_a``, one per seed) with B; the stored comparison id(s)."""
    over_seeds = getattr(engine, "compare_over_seeds", None)
    if over_seeds is not None:
        res = over_seeds(registry, evaluations_a=evaluations_a, evaluations_b=evaluations_b, label_a=label_a,
                         label_b=label_b, n_resamples=statistics.resamples, seed=statistics.seed,
                         alpha=statistics.alpha, on_event=on_event)
        cid = res["pairs"][0]["comparison_id"]
        return {"comparison_id": cid, "comparison_ids": [cid], "mode": "seeds"}
    ids = []
    for a, b in zip(evaluations_a, evaluations_b):
        res = engine.compare(registry, evals=[a, b], n_resamples=statistics.resamples, seed=statistics.seed,
                             alpha=statistics.alpha, on_event=on_event)
        ids.append(res["pairs"][0]["comparison_id"])
    return {"comparison_id": ids[0], "comparison_ids": ids, "mode": "per-seed"}


def adjust_study_fdr(registry: Registry, spec: StudySpec, states: dict[str, Any]) -> list[list[int]]:
    """Benjamini-Hochberg over the study's family (every comparison, or each dataset's) when the
    engine can adjust across stored comparisons; the families adjusted."""
    adjust = getattr(engine, "adjust_fdr", None)
    by_dataset: dict[str, list[int]] = {}
    for st in states.values():
        if st.stage == "compare" and st.comparison_id is not None:
            by_dataset.setdefault(st.dataset, []).append(st.comparison_id)
    families = ([sum(by_dataset.values(), [])] if spec.statistics.fdr_family == "study"
                else list(by_dataset.values()))
    families = [f for f in families if f]
    if adjust is not None:
        for ids in families:
            adjust(registry, ids, family=spec.statistics.fdr_family, alpha=spec.statistics.alpha)
    return families


__all__ = ["adjust_study_fdr", "compare_inits"]
