"""What a comparison leaves: its warnings, the FDR adjustment within one call, its stored rows."""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np

from .. import stats
from .._util import finite_or_none
from ..choices import DEFAULT_RESAMPLES
from ..errors import InputError
from ..registry.db import Registry
from ..registry.models import Comparison, ComparisonResult

P_VALUE_METHOD = (
    "paired bootstrap over images, two-sided: p = min(1, 2*min(1+#{d*<=0}, 1+#{d*>=0})/(B+1)); "
    "95% percentile CI"
)
FDR_METHOD = (
    "Benjamini-Hochberg over every pair x finding of the comparison group (bootstrap p); "
    "macro rows adjusted separately over the group's pairs"
)


def _check_numbers(n_resamples: int, alpha: float) -> None:
    if n_resamples < 10:
        raise InputError(f"`n_resamples` {n_resamples} is too few for a p-value - use {DEFAULT_RESAMPLES} "
                         "(the default) or more")
    if not 0 < alpha < 1:
        raise InputError(f"`alpha` {alpha} must lie between 0 and 1, e.g. 0.05")


def floor_warnings(n_resamples: int, alpha: float) -> list[str]:
    """The smallest bootstrap p-value is 2/(B+1): with too few resamples nothing can be significant."""
    floor = 2 / (n_resamples + 1)
    if floor <= alpha:
        return []
    return [f"with {n_resamples} resamples the smallest possible p-value is {floor:.3g}, above `alpha` "
            f"{alpha:g}: no difference can come out significant - use `n_resamples` of at least "
            f"{math.ceil(2 / alpha)} (default {DEFAULT_RESAMPLES})"]


def pair_warnings(res: dict[str, Any], n_resamples: int) -> list[str]:
    """What a reader of this comparison must know: degenerate resamples, images left out."""
    out = []
    worst = max((r.get("n_degenerate") or 0 for r in res["findings"] + [res["macro"]]), default=0)
    if worst:
        macro_n = res["macro"].get("n_degenerate") or 0
        out.append(
            f"up to {worst} of {n_resamples} resamples had a finding with no positive or no negative "
            f"image and were left out of it (macro: {macro_n}); with this few images the p-values "
            "are unreliable - compare on a larger test part"
        )
    if res["n_dropped_images"] or res["n_label_conflicts"]:
        out.append(f"compared on the images both evaluations hold (`intersect`): {res['n_dropped_images']} "
                   f"images left out, {res['n_label_conflicts']} disputed labels excluded")
    return out


def _adjust(results: list[dict[str, Any]], alpha: float) -> None:
    """Benjamini-Hochberg over every pair x finding (macro rows over the pairs); 'better' where
    the adjusted p is below ``alpha``."""
    flat = [r for res in results for r in res["findings"]]
    for r, q in zip(flat, stats.fdr_bh([r["p_value"] for r in flat])):
        r["p_adjusted"] = float(q)
    for res, q in zip(results, stats.fdr_bh([res["macro"]["p_value"] for res in results])):
        res["macro"]["p_adjusted"] = float(q)
    for res in results:
        for r in res["findings"] + [res["macro"]]:
            sig = r["p_adjusted"] is not None and r["p_adjusted"] < alpha
            r["better"] = (res["a"] if r["diff"] > 0 else res["b"]) if sig and r["diff"] != 0 else None


def _store(registry: Registry, results: list[dict[str, Any]], *, dataset_id: int, n_resamples: int,
           seed: int, options: dict[str, Any], group_id: str | None = None) -> str:
    """One Comparison (with its result rows) per pair, in one transaction; the group id."""
    group_id = group_id or uuid.uuid4().hex
    with registry.session() as s:
        for res in results:
            cmp_row = Comparison(
                dataset_id=dataset_id, evaluation_a_id=res["evaluation_a"],
                evaluation_b_id=res["evaluation_b"], label_a=res["a"][:128], label_b=res["b"][:128],
                group_id=group_id, n_images=res["n_images"], n_resamples=n_resamples, seed=seed,
                options={**options, "tune_a": res["tune_a"], "tune_b": res["tune_b"],
                         "skipped_findings": res["skipped_findings"],
                         "n_dropped_images": res["n_dropped_images"],
                         "n_label_conflicts": res["n_label_conflicts"],
                         "warnings": res["warnings"], **res.get("options", {})},
            )
            cmp_row.results = [
                ComparisonResult(**{k: _num(r[k]) for k in _RESULT_COLUMNS})
                for r in res["findings"] + [res["macro"]]
            ]
            s.add(cmp_row)
            s.flush()
            res["comparison_id"] = cmp_row.id
    return group_id


_RESULT_COLUMNS = ("finding", "auc_a", "auc_b", "diff", "ci_low", "ci_high", "p_value", "p_delong",
                   "p_adjusted", "n_positive", "n_negative", "n_degenerate")


def _num(v):
    """A stored value: floats finite or None, numpy scalars as Python numbers."""
    if isinstance(v, (float, np.floating)):
        return finite_or_none(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


_PAIR_KEYS = ["comparison_id", "a", "b", "evaluation_a", "evaluation_b", "tune_a", "tune_b", "n_images",
              "findings", "macro", "skipped_findings", "n_dropped_images", "n_label_conflicts", "warnings"]


def _ordered(res: dict[str, Any]) -> dict[str, Any]:
    return {k: res[k] for k in _PAIR_KEYS}


def comparison_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (pair x finding, macro last) for CSV output."""
    out = []
    for pair in result["pairs"]:
        for r in pair["findings"] + [pair["macro"]]:
            out.append({"comparison_id": pair["comparison_id"], "a": pair["a"], "b": pair["b"],
                        **{k: r.get(k) for k in _RESULT_COLUMNS}, "better": r.get("better")})
    return out
