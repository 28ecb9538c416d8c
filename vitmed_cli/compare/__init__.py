"""Compare stored evaluations with paired statistics.

``compare`` picks evaluations (by id, run or initialisation), reads them as
arrays (:func:`~vitmed_cli.evaluations.store.load_evaluation_arrays`), aligns
them by image, runs :mod:`vitmed_cli.stats` and stores one ``Comparison`` per
pair with its ``ComparisonResult`` rows.  ``compare_over_seeds`` compares two
initialisations with several seeds each as one comparison (seeds pooled per
bootstrap resample); ``adjust_fdr`` redoes the Benjamini-Hochberg adjustment
over a family of stored comparisons (a study, or one dataset of it).

Modules: :mod:`.choose` (which evaluations), :mod:`.align` (on the same images),
:mod:`.pairs` (``compare``), :mod:`.seeds` (``compare_over_seeds``), :mod:`.store`
(warnings, FDR within a call, stored rows) and :mod:`.family` (``adjust_fdr``).
"""

from __future__ import annotations

from ..evaluations.store import EvalArrays, load_evaluation_arrays
from .align import Aligned, align_evaluations
from .family import adjust_fdr
from .pairs import compare
from .seeds import AlignedSeeds, align_seed_evaluations, compare_over_seeds
from .store import comparison_rows

__all__ = [
    "Aligned", "AlignedSeeds", "EvalArrays", "adjust_fdr", "align_evaluations", "align_seed_evaluations",
    "compare", "compare_over_seeds", "comparison_rows", "load_evaluation_arrays",
]
