"""The report's figures (ROC per finding, validation AUC per epoch, macro AUC bars) as PNG bytes."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from .model import DatasetSection, FigureData, init_sort_key, slug

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _new_figure(width: float = 4.6, height: float = 4.0):
    # The object API (no pyplot): no global state, always the Agg canvas.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _roc_figure(sec: DatasetSection, finding: str, arrays: dict[int, Any]) -> FigureData | None:
    from sklearn.metrics import roc_curve

    fig = _new_figure()
    ax = fig.add_subplot()
    drawn = 0
    for row in sec.inits:
        arr = arrays.get(row.evaluation_id)
        if arr is None or finding not in arr.findings:
            continue
        j = arr.findings.index(finding)
        y, p = arr.y_true[:, j], arr.scores[:, j]
        keep = ~np.isnan(y) & ~np.isnan(p)
        y, p = y[keep], p[keep]
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        auc = next((r.auc for r in sec.per_finding
                    if r.finding == finding and r.evaluation_id == row.evaluation_id), None)
        label = row.init_name + (f" (AUC {auc:.3f})" if auc is not None else "")
        ax.plot(fpr, tpr, lw=1.6, label=label)
        drawn += 1
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{sec.name}: {finding}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return FigureData(
        kind="roc", title=f"ROC curves of {finding} on {sec.name} (test part)",
        filename=f"roc_{slug(sec.name)}_{slug(finding)}.png", png=_png(fig),
        dataset=sec.name, finding=finding,
    )


def _epoch_figure(sec: DatasetSection) -> FigureData | None:
    runs = [r for r in sec.runs if any(v is not None for v in r.val_macro_auc)]
    if not runs:
        return None
    fig = _new_figure(6.0, 3.8)
    ax = fig.add_subplot()
    for r in runs:
        pts = [(e, v) for e, v in zip(r.epochs, r.val_macro_auc) if v is not None]
        ax.plot([e for e, _ in pts], [v for _, v in pts], marker="o", ms=3, lw=1.4,
                label=f"run {r.id} ({r.init_name})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation macro AUC")
    ax.set_title(f"{sec.name}: validation AUC per epoch", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return FigureData(
        kind="epochs", title=f"Validation macro AUC per epoch, runs on {sec.name}",
        filename=f"epochs_{slug(sec.name)}.png", png=_png(fig), dataset=sec.name,
    )


def dataset_figures(sec: DatasetSection, arrays: dict[int, Any]) -> list[FigureData]:
    out: list[FigureData] = []
    names = list(sec.findings) + [r.finding for r in sec.per_finding if r.finding not in sec.findings]
    for finding in dict.fromkeys(names):
        fig = _roc_figure(sec, finding, arrays)
        if fig is not None:
            out.append(fig)
    ep = _epoch_figure(sec)
    if ep is not None:
        out.append(ep)
    return out


def unique_filenames(figs: list[FigureData]) -> None:
    # Names that slug alike ("Lung Lesion", "lung-lesion") must not overwrite each other's PNG.
    seen: set[str] = set()
    for f in figs:
        stem, n = f.filename[:-4], 1
        while f.filename in seen:
            n += 1
            f.filename = f"{stem}_{n}.png"
        seen.add(f.filename)


def bar_figure(sections: list[DatasetSection]) -> FigureData | None:
    inits = sorted({r.init_name for s in sections for r in s.inits}, key=init_sort_key)
    if not inits:
        return None
    colours = {name: f"C{k % 10}" for k, name in enumerate(inits)}
    widest = max(len(s.inits) for s in sections)
    fig = _new_figure(max(4.5, 0.55 * sum(len(s.inits) for s in sections) + 2.5), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / widest
    labelled: set[str] = set()
    lows = [0.5]
    for i, sec in enumerate(sections):
        # Only the initialisations this dataset has, centred on its tick.
        for k, row in enumerate(sec.inits):
            v = row.auc_mean if row.auc_mean is not None else row.auc
            if v is None:
                continue
            err = None
            if row.ci_low is not None and row.ci_high is not None:
                err = [[max(0.0, v - row.ci_low)], [max(0.0, row.ci_high - v)]]
                lows.append(row.ci_low)
            lows.append(v)
            ax.bar(i + (k - (len(sec.inits) - 1) / 2) * width, v, width * 0.95, yerr=err, capsize=3,
                   color=colours[row.init_name],
                   label=None if row.init_name in labelled else row.init_name)
            labelled.add(row.init_name)
    ax.set_xticks(np.arange(len(sections)), [s.name for s in sections])
    ax.set_ylabel("macro AUC (bootstrap mean, 95% CI)")
    # An AUC axis starts at chance (0.5) or, when some bar or interval falls below chance, at 0.
    bottom = 0.5 if min(lows) >= 0.5 else 0.0
    ax.set_ylim(bottom, 1.0)
    if bottom == 0.5:
        ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
    ax.set_title("AUC per dataset and initialisation", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    start = "0.5 (chance)" if bottom == 0.5 else "0"
    return FigureData(kind="bars", title=f"Macro AUC per dataset and initialisation (test part); "
                                         f"the y axis starts at {start}",
                      filename="auc_bars.png", png=_png(fig))
