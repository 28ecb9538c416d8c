"""Multiple testing: Benjamini-Hochberg adjusted p-values."""

from __future__ import annotations


import numpy as np


# --------------------------------------------------------------------------- multiple testing


def fdr_bh(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values, by statsmodels ``multipletests(method="fdr_bh")``.

    NaN entries stay NaN and do not count towards the number of tests.
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return out
