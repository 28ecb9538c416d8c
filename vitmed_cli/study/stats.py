"""The study's statistics stage: one init against the reference over seeds, and the FDR family.

:func:`compare_inits` is the one place the study calls the comparison engine:
:func:`vitmed_cli.compare.compare_over_seeds` (one p-value per finding from resamples that
average each init's AUC over its seeds, with each seed's own p-value beside it; with one seed,
:func:`vitmed_cli.compare.compare`).
:func:`adjust_study_fdr` then adjusts the p-values over the study's stated family.
"""

from __future__ import annotations

from typing import Any

from ..compare import adjust_fdr, compare, compare_over_seeds
from ..events import Listener
from ..registry.db import Registry
from .spec import StatisticsSpec, StudySpec


def compare_inits(registry: Registry, *, evaluations_a: list[int], evaluations_b: list[int], label_a: str,
                  label_b: str, seeds: list[int], statistics: StatisticsSpec,
                  on_event: Listener | None = None) -> dict[str, Any]:
    """Compare init A (``evaluations_a``, one per seed) with B; the stored comparison's id.

    With one seed each this is the plain paired comparison (which adds DeLong's test)."""
    if len(evaluations_a) == 1 and len(evaluations_b) == 1:
        res = compare(registry, evals=[evaluations_a[0], evaluations_b[0]], n_resamples=statistics.resamples,
                      seed=statistics.seed, alpha=statistics.alpha, on_event=on_event)
        cid = res["pairs"][0]["comparison_id"]
        return {"comparison_id": cid, "comparison_ids": [cid], "mode": "pair"}
    res = compare_over_seeds(registry, evaluations_a=evaluations_a, evaluations_b=evaluations_b, label_a=label_a,
                             label_b=label_b, n_resamples=statistics.resamples, seed=statistics.seed,
                             alpha=statistics.alpha, per_seed=len(seeds) > 1, on_event=on_event)
    cid = res["pairs"][0]["comparison_id"]
    return {"comparison_id": cid, "comparison_ids": [cid], "mode": "seeds"}


def study_families(spec: StudySpec, states: dict[str, Any]) -> dict[str, list[int]]:
    """The FDR families of the study: all its comparisons (``study``) or each dataset's (``dataset``)."""
    by_dataset: dict[str, list[int]] = {}
    for st in states.values():
        if st.stage == "compare" and st.comparison_id is not None:
            by_dataset.setdefault(st.dataset, []).append(st.comparison_id)
    if spec.statistics.fdr_family == "study":
        ids = [i for ids in by_dataset.values() for i in ids]
        return {spec.name: ids} if ids else {}
    return {f"{spec.name}/{d}": ids for d, ids in by_dataset.items()}


def adjust_study_fdr(registry: Registry, spec: StudySpec, states: dict[str, Any]) -> dict[str, list[int]]:
    """Benjamini-Hochberg over each family of the study's comparisons; the families."""
    families = study_families(spec, states)
    for family, ids in families.items():
        adjust_fdr(registry, ids, family=family, alpha=spec.statistics.alpha)
    return families


__all__ = ["adjust_study_fdr", "compare_inits", "study_families"]
