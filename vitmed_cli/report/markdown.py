"""The report as Markdown, with its figures as PNG files beside it."""

from __future__ import annotations

from typing import Sequence

from .cells import (  # the cells and columns both renderers share
    CMP_COLS,
    FINDING_COLS,
    SUMMARY_COLS,
    _cmp_caption,
    _cmp_cells,
    _comparison_note,
    comparison_warnings,
    _finding_cells,
    _provenance_items,
    _short,
    _summary_cells,
)
from .model import ALPHA, DatasetSection, FigureData, Report, is_significant

def _md_cell(text: str) -> str:
    # Backslash escapes keep names such as "<fluid>" or "a|b" literal in every CommonMark renderer.
    for ch in ("\\", "|", "<", ">", "*", "_", "`", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def _md_table(cols: Sequence[str], rows: list[list[str]], sig: list[set[int]] | None = None) -> str:
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for i, cells in enumerate(rows):
        out = []
        for j, c in enumerate(cells):
            c = _md_cell(c)
            out.append(f"**{c}**" if sig and j in sig[i] else c)
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def _md_provenance(rep: Report, sec: DatasetSection) -> str:
    lines = [f"### Provenance of {_md_cell(sec.name)}", ""]
    for label, text, full in _provenance_items(rep, sec, sec.inits):
        if full:
            text = text.replace(_short(full), full, 1)
        lines.append(f"- **{_md_cell(label)}**: {_md_cell(text)}")
    return "\n".join(lines)


def render_markdown(report: Report, figure_dir: str = "report_files") -> str:
    """The same tables as pipe tables; figures linked as ``figure_dir/<filename>``."""
    rep = report
    o = [
        "# vitmed report", "",
        f"Generated {rep.generated_at} by vitmed {rep.vitmed_version} from the registry at "
        f"`{rep.registry_url}`.", "",
        "For each dataset and initialisation the latest evaluation on the test part is shown, grouped "
        "by training resolution; a model tuned other than fully is named with its tuning (e.g. "
        "dinov2 [head] for a linear probe). AUC is "
        f"the macro average over findings; mean ± SD and the 95% CI are those of the macro average over "
        f"{rep.n_resamples} bootstrap resamples of the test images (seed {rep.seed}). Sensitivity, specificity and "
        "accuracy are at the validation-chosen threshold; \"-\" where none was stored. Bold p-values "
        f"are below {ALPHA}.", "",
    ]

    def fig_md(f: FigureData) -> str:
        return f"![{_md_cell(f.title)}]({figure_dir}/{f.filename})"

    if rep.figures:
        o += ["## Overview", ""] + [fig_md(f) + "\n" for f in rep.figures]
    for sec in rep.datasets:
        ref = f"Provenance: see *Provenance of {_md_cell(sec.name)}* above."
        o += [f"## Dataset {_md_cell(sec.name)}", "", "### AUC per initialisation", "",
              _md_table(SUMMARY_COLS, [_summary_cells(r) for r in sec.inits]), "",
              _md_provenance(rep, sec), "",
              "### Per finding", "",
              _md_table(FINDING_COLS, [_finding_cells(r) for r in sec.per_finding]), "", ref, ""]
        shown = {r.evaluation_id for r in sec.inits}
        for c in sec.comparisons:
            sig = [{j for j, p in ((5, r.p_value), (6, r.p_delong), (7, r.p_adjusted)) if is_significant(p)}
                   for r in c.rows]
            o += [f"### {_md_cell(_cmp_caption(c)[0].upper() + _cmp_caption(c)[1:])}", "",
                  _md_table(CMP_COLS, [_cmp_cells(r) for r in c.rows], sig), ""]
            o += [f"> **Warning:** {_md_cell(w)}\n" for w in comparison_warnings(c)]
            o += [_md_cell(_comparison_note(c, shown)) + " " + ref, ""]
        if sec.figures:
            o += ["### Figures", ""] + [fig_md(f) + "\n" for f in sec.figures]
    return "\n".join(o).rstrip() + "\n"
