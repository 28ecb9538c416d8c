"""Benjamini-Hochberg over a family of stored comparisons (a study, or one dataset of it)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import stats
from .._util import finite_or_none
from ..choices import DEFAULT_ALPHA
from ..errors import InputError, NotFound
from ..registry.db import Registry
from ..registry.models import MACRO, Comparison

FAMILY_FDR_METHOD = (
    "Benjamini-Hochberg over every comparison x finding of the family (bootstrap p); macro rows "
    "adjusted separately over the family's comparisons"
)


def adjust_fdr(registry: Registry, comparison_ids: Sequence[int], *, family: str,
               alpha: float = DEFAULT_ALPHA) -> None:
    """Benjamini-Hochberg over the findings of several stored comparisons as one family, in one transaction.

    As :func:`compare` does within a call: the raw bootstrap p-values of every
    comparison x finding (macro rows excluded) form the family; the macro rows are
    adjusted separately, over the comparisons' macro p-values.  Each comparison's
    ``p_adjusted`` is replaced and its options record ``fdr_family`` = ``family``
    (e.g. the study's name, or "study/DATASET" for a per-dataset family),
    ``fdr_method``, the family's comparison ids and ``alpha``.
    """
    ids = list(dict.fromkeys(int(i) for i in comparison_ids))
    if not ids:
        raise InputError("`comparison_ids` is empty - give the ids of the comparisons in the family")
    if not isinstance(family, str) or not family.strip():
        raise InputError("`family` must name the family, e.g. the study's name or STUDY/DATASET")
    if not 0 < alpha < 1:
        raise InputError(f"`alpha` {alpha} must lie between 0 and 1, e.g. 0.05")
    with registry.session() as s:
        cmps = []
        for i in ids:
            row = s.get(Comparison, i)
            if row is None:
                raise NotFound(f"no comparison with id {i} - run vitmed compare first")
            cmps.append(row)
        findings = [r for c in cmps for r in c.results if r.finding != MACRO]
        macros = [r for c in cmps for r in c.results if r.finding == MACRO]
        for rows in (findings, macros):
            raw = [np.nan if r.p_value is None else r.p_value for r in rows]
            for r, q in zip(rows, stats.fdr_bh(raw)):
                r.p_adjusted = finite_or_none(q)
        n_tests = sum(r.p_value is not None for r in findings)
        for c in cmps:  # a new dict: the JSON column sees the change
            c.options = {**(c.options or {}), "fdr_family": family, "fdr_method": FAMILY_FDR_METHOD,
                         "fdr_comparisons": ids, "fdr_n_tests": n_tests, "alpha": alpha}
