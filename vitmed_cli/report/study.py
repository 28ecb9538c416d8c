"""``vitmed report --study NAME``: the paper's table for a study run by ``vitmed study run``.

Rows are datasets, columns initialisations: the macro AUC on the test part as mean +- SD
over the study's seeds (one evaluation per seed, SD with ddof 1), with the p-value of each
init against the comparison's reference; a forest plot of the macro AUC difference with its
95 % bootstrap interval per dataset; a table per dataset with each finding's AUC (mean +- SD
over seeds); and the protocol block - every training and statistics choice, and where
vitmed knowingly differs from the paper.  Everything is read from the registry: the study's
row, its cells and the evaluations and comparisons they name.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from .. import __version__
from .._util import atomic_write
from ..errors import ConfigError, NotFound
from ..events import Listener
from ..registry.db import Registry
from ..registry.models import MACRO, Comparison, Evaluation, EvaluationMetric, Run, Study
from .figures import _new_figure, _png
from .html import CSS
from .model import FigureData, WrittenReport, is_significant, slug

# the paper's choices (shared/study/tayebi2024.md), to name where a study differs
PAPER = {"lr": 1e-5, "weight_decay": 0.0, "batch_size": 30, "epochs": 100, "image_size": 224,
         "rotation": 7.0, "flip": True, "normalise": "none", "uncertain": "zeros", "tune": "all",
         "scheduler": "constant"}
DEVIATIONS = [
    "Model selection on a validation part taken from the training data (the paper's code validated, and "
    "picked its epoch, on the test set).",
    "Two-sided paired-bootstrap p-values with the +1 correction (the code tried a one-sided test in both "
    "directions, an effective alpha of 0.10).",
    "Sensitivity, specificity and accuracy at Youden's threshold chosen on the validation part (the code "
    "chose it on the test set, again in every resample).",
    "Every cell over several seeds, reported as mean ± SD over seeds (the paper trained each cell once and "
    "reported ± over bootstrap resamples pooled over findings).",
    "Benjamini-Hochberg over the stated family of comparisons (the code applied it to single p-values).",
]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def mean_sd(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and SD (ddof 1) over the finite values; SD None with fewer than two."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return None, None, 0
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None), int(v.size)


@dataclass
class Cell:
    mean: float | None
    sd: float | None
    n: int
    evaluation_ids: list[int]
    p: float | None = None
    p_adjusted: float | None = None
    vs: str | None = None
    bootstrap_sd: float | None = None  # SD over bootstrap resamples of the seed-mean AUC (the paper's ±)

    def text(self) -> str:
        if self.mean is None:
            return "n/a"
        out = _fmt(self.mean) + (f" ± {_fmt(self.sd)}" if self.sd is not None else "")
        return out


@dataclass
class ForestRow:
    dataset: str
    label: str
    diff: float | None
    lo: float | None
    hi: float | None
    p: float | None


@dataclass
class StudyReport:
    name: str
    generated_at: str
    registry_url: str
    seeds: list[int]
    columns: list[str]
    datasets: list[str]
    table: dict[str, dict[str, Cell]]
    per_finding: dict[str, dict[str, dict[str, Cell]]]
    forest: list[ForestRow]
    protocol: list[tuple[str, str]]
    differences: list[str]
    deviations: list[str]
    p_note: str
    figures: list[FigureData] = field(default_factory=list)


def _comparison_rows(session, comparison_ids: list[int]) -> list[tuple[Comparison, dict[str, Any]]]:
    out = []
    for cid in comparison_ids:
        cmp = session.get(Comparison, cid)
        if cmp is not None:
            out.append((cmp, {r.finding: r for r in cmp.results}))
    return out


def gather_study(registry: Registry, name: str) -> StudyReport:
    """The study's table, forest rows, per-finding tables and protocol block, from the registry."""
    with registry.session(readonly=True) as s:
        study = s.scalar(select(Study).where(Study.name == name))
        if study is None:
            known = sorted(s.scalars(select(Study.name)))
            raise NotFound(f"no study {name!r} in this registry ({', '.join(known) or 'none yet'}) - run "
                           "vitmed study run FILE first")
        cfg = study.config or {}
        seeds = list(cfg.get("seeds") or [])
        evals: dict[tuple[str, str], list[Evaluation]] = {}
        compares = []
        for c in study.cells:
            if c.stage == "predict" and c.state == "done" and c.evaluation_id is not None:
                ev = s.get(Evaluation, c.evaluation_id)
                if ev is not None:
                    evals.setdefault((c.dataset, c.init), []).append(ev)
            elif c.stage == "compare" and c.state == "done" and c.comparison_id is not None:
                ids = (c.detail or {}).get("comparison_ids") or [c.comparison_id]
                compares.append((c, _comparison_rows(s, ids)))
        datasets = [d for d in (cfg.get("datasets") or {}) if any(k[0] == d for k in evals)]
        sizes: dict[str, set[int]] = {}
        for (d, _i), evs in evals.items():
            for ev in evs:
                run = s.get(Run, ev.run_id) if ev.run_id else None
                if run is not None:
                    sizes.setdefault(d, set()).add(run.image_size)

        def column(d: str, init: str, ev: Evaluation) -> str:
            if len(sizes.get(d, ())) > 1:  # one dataset at several resolutions: one column per size
                run = s.get(Run, ev.run_id)
                return f"{init} @{run.image_size}px"
            return init

        table: dict[str, dict[str, Cell]] = {}
        per_finding: dict[str, dict[str, dict[str, Cell]]] = {}
        columns: list[str] = []
        for (d, init), evs in evals.items():
            groups: dict[str, list[Evaluation]] = {}
            for ev in evs:
                groups.setdefault(column(d, init, ev), []).append(ev)
            for col, group in groups.items():
                if col not in columns:
                    columns.append(col)
                m, sd, n = mean_sd([ev.macro_auc for ev in group])
                table.setdefault(d, {})[col] = Cell(m, sd, n, [ev.id for ev in group])
                by_finding: dict[str, list[float | None]] = {}
                for ev in group:
                    for met in s.scalars(select(EvaluationMetric).where(EvaluationMetric.evaluation_id == ev.id)):
                        by_finding.setdefault(met.finding, []).append(met.auc)
                for f, vals in by_finding.items():
                    fm, fsd, fn = mean_sd(vals)
                    per_finding.setdefault(d, {}).setdefault(f, {})[col] = Cell(fm, fsd, fn, [])
        def compared(c, rows) -> tuple[str, str, str, str]:
            """The columns of a comparison's init and reference, the reference's name, and its size."""
            ref = _ref_of(c.key)
            if rows and len(sizes.get(c.dataset, ())) > 1:  # both sides are at one size (the cell's)
                ev = s.get(Evaluation, rows[0][0].evaluation_a_id)
                run = s.get(Run, ev.run_id) if ev is not None and ev.run_id else None
                if run is not None:
                    at = f" @{run.image_size}px"
                    ref = ref.removesuffix(f"@{run.image_size}")  # the study cell's key names the size
                    return c.init + at, ref + at, ref, at
            return c.init, ref, ref, ""

        forest: list[ForestRow] = []
        modes = set()
        for c, rows in compares:
            col_a, col_ref, ref, at = compared(c, rows)
            for i, (cmp, results) in enumerate(rows):
                macro = results.get(MACRO)
                mode = (cmp.options or {}).get("mode", "per-seed" if len(rows) > 1 else "pair")
                modes.add(mode)
                label = f"{c.init} vs {ref}{at}"
                if len(rows) > 1:
                    label += f" (seed {seeds[i] if i < len(seeds) else i})"
                if macro is not None:
                    forest.append(ForestRow(c.dataset, label, macro.diff, macro.ci_low, macro.ci_high,
                                            macro.p_adjusted if macro.p_adjusted is not None else macro.p_value))
            for cmp, _results in rows:
                sides = (cmp.options or {}).get("over_seeds") or {}
                for side, col in (("a", col_a), ("b", col_ref)):
                    for f, v in (sides.get(side) or {}).items():
                        cell = (table.get(c.dataset, {}).get(col) if f == MACRO
                                else per_finding.get(c.dataset, {}).get(f, {}).get(col))
                        if cell is not None and (v or {}).get("bootstrap_sd") is not None:
                            cell.bootstrap_sd = v["bootstrap_sd"]
            if rows:
                res0 = rows[0][1]
                macro = res0.get(MACRO)
                target = table.get(c.dataset, {}).get(col_a)
                if target is not None and macro is not None:
                    # one comparison per seed: the weakest evidence of them (the largest p) is shown
                    macros = [r[MACRO] for _, r in rows if r.get(MACRO) is not None]
                    target.p = _largest([m.p_value for m in macros])
                    target.p_adjusted = _largest([m.p_adjusted for m in macros])
                    target.vs = ref
                for f in res0:
                    if f == MACRO:
                        continue
                    cell = per_finding.get(c.dataset, {}).get(f, {}).get(col_a)
                    if cell is not None:
                        same = [r[f] for _, r in rows if f in r]
                        cell.p = _largest([r.p_value for r in same])
                        cell.p_adjusted = _largest([r.p_adjusted for r in same])
                        cell.vs = ref
    if "seeds" in modes:
        p_note = ("p: paired bootstrap over the test images, each resample averaging an init's AUC over its "
                  "seeds (two-sided); FDR-adjusted p where shown")
    elif modes <= {"pair"}:
        p_note = "p: paired bootstrap over the test images (two-sided); FDR-adjusted p where shown"
    else:
        p_note = ("p: paired bootstrap over the test images per seed (two-sided); with several seeds the "
                  "largest of the per-seed p-values is shown")
    protocol, differences = _protocol(cfg)
    rep = StudyReport(name=name, generated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      registry_url=registry.url, seeds=seeds, columns=sorted(columns, key=_col_order(cfg)),
                      datasets=datasets, table=table, per_finding=per_finding, forest=forest, protocol=protocol,
                      differences=differences, deviations=list(DEVIATIONS), p_note=p_note)
    fig = forest_figure(rep)
    if fig is not None:
        rep.figures.append(fig)
    return rep


def _largest(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return max(finite) if finite else None


def _ref_of(key: str) -> str:
    return key.rsplit("-vs-", 1)[-1]


def _col_order(cfg: dict[str, Any]):
    order = list((cfg.get("inits") or {}).keys())

    def key(col: str) -> tuple[int, int, str]:
        base, _, at = col.partition(" @")
        size = int(at[:-2]) if at.endswith("px") and at[:-2].isdigit() else 0
        # grouped by resolution (512 px before 1024 px), then in the study file's order of inits
        return (size, order.index(base) if base in order else len(order), col)

    return key


def _protocol(cfg: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """Every choice of the study's protocol, and where it differs from the paper's."""
    from ..training.config import TrainConfig
    import dataclasses

    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else None)
                for f in dataclasses.fields(TrainConfig)}
    proto = {**{k: v for k, v in defaults.items() if k not in ("dataset", "init", "split", "seed", "findings")},
             **(cfg.get("protocol") or {})}
    rows = [(k, _val(proto[k])) for k in sorted(proto)]
    if "rotation" not in proto and "max_rotation" in proto:  # the older name of the same option
        proto["rotation"] = proto["max_rotation"]
    st = cfg.get("statistics") or {}
    rows += [("seeds", ", ".join(map(str, cfg.get("seeds") or []))),
             ("bootstrap resamples", str(st.get("resamples"))), ("alpha", str(st.get("alpha"))),
             ("FDR family", f"{st.get('fdr_family')} (Benjamini-Hochberg)")]
    for name, d in (cfg.get("datasets") or {}).items():
        sp = d.get("split") or {}
        extra = f"; protocol {d['protocol']}" if d.get("protocol") else ""
        at = ", ".join(map(str, d.get("image_sizes") or [d.get("image_size")]))
        rows.append((f"dataset {name}", f"{d.get('format')} at {at} px, split {sp.get('policy')}"
                     f"; findings: {', '.join(d.get('findings') or ['all'])}{extra}"))
    for name, e in (cfg.get("inits") or {}).items():
        if e.get("stage"):
            what = f"fine-tuned on {e['stage']['dataset']} from {e['stage']['from_init']} (seed {e['stage']['seed']})"
        elif e.get("pretrain"):
            what = f"{e['pretrain']} file {e.get('file') or e.get('dir')}"
        else:
            what = "registered name"
        if e.get("protocol"):
            what += f"; protocol {e['protocol']}"
        rows.append((f"init {name}", what))
    differences = []
    for k, paper in PAPER.items():
        if k in proto and proto[k] != paper and not (isinstance(paper, float) and isinstance(proto[k], (int, float))
                                                     and math.isclose(float(proto[k]), paper)):
            differences.append(f"{k} = {_val(proto[k])} (the paper: {_val(paper)})")
    return rows, differences


def _val(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "default"
    return str(v)


def forest_figure(rep: StudyReport) -> FigureData | None:
    """Macro AUC difference (init - reference) with its 95 % interval, one row per comparison."""
    rows = [r for r in rep.forest if r.diff is not None]
    if not rows:
        return None
    fig = _new_figure(6.4, 0.45 * len(rows) + 1.2)
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        lo = r.lo if r.lo is not None else r.diff
        hi = r.hi if r.hi is not None else r.diff
        ax.plot([lo, hi], [yi, yi], color="#445", lw=1.5)
        ax.plot([r.diff], [yi], "s", color="#c05a00" if is_significant(r.p) else "#445")
    ax.axvline(0, color="#999", lw=1, ls="--")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r.dataset}: {r.label}" for r in rows], fontsize=8)
    ax.set_xlabel("Δ macro AUC (init − reference), 95% CI")
    ax.set_title(f"{rep.name}: initialisations against the reference", fontsize=9)
    return FigureData(kind="forest", title="ΔAUC per dataset", filename=f"{slug(rep.name)}-forest.png",
                      png=_png(fig))


# --------------------------------------------------------------------------- rendering

def _cell_text(c: Cell | None, with_p: bool = True) -> str:
    if c is None:
        return "-"
    out = c.text()
    if with_p and c.p is not None:
        out += f" (p {_p(c.p_adjusted if c.p_adjusted is not None else c.p)})"
    return out


def _has_bootstrap(rep: StudyReport) -> bool:
    return any(c.bootstrap_sd is not None for row in rep.table.values() for c in row.values())


def _boot_text(c: Cell | None) -> str:
    if c is None or c.mean is None:
        return "-"
    return _fmt(c.mean) + (f" ± {_fmt(c.bootstrap_sd)}" if c.bootstrap_sd is not None else "")


def render_study_markdown(rep: StudyReport, figure_dir: str) -> str:
    lines = [f"# Study {rep.name}", "",
             f"Generated {rep.generated_at} by vitmed {__version__} from `{rep.registry_url}`; seeds "
             f"{', '.join(map(str, rep.seeds))}.", "",
             "## Macro AUC (mean ± SD over seeds)", "",
             "| dataset | " + " | ".join(rep.columns) + " |", "|---|" + "---|" * len(rep.columns)]
    for d in rep.datasets:
        lines.append(f"| {d} | " + " | ".join(_cell_text(rep.table.get(d, {}).get(c)) for c in rep.columns) + " |")
    lines += ["", rep.p_note, ""]
    if _has_bootstrap(rep):
        lines += ["## Macro AUC ± bootstrap SD (the SD the paper reported: over resamples of the test images)", "",
                  "| dataset | " + " | ".join(rep.columns) + " |", "|---|" + "---|" * len(rep.columns)]
        for d in rep.datasets:
            lines.append(f"| {d} | " + " | ".join(_boot_text(rep.table.get(d, {}).get(c)) for c in rep.columns)
                         + " |")
        lines.append("")
    for f in rep.figures:
        lines += [f"![{f.title}]({figure_dir}/{f.filename})", ""]
    for d in rep.datasets:
        cols = rep.columns
        lines += [f"## {d}: AUC per finding (mean ± SD over seeds)", "",
                  "| finding | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for f, by_col in rep.per_finding.get(d, {}).items():
            lines.append(f"| {f} | " + " | ".join(_cell_text(by_col.get(c)) for c in cols) + " |")
        lines.append("")
    lines += ["## Protocol", "", "| choice | value |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in rep.protocol]
    lines += ["", "### Where this study differs from the paper's protocol", ""]
    lines += [f"- {x}" for x in rep.differences] or ["- nothing in the training protocol"]
    lines += ["", "### Where vitmed knowingly differs from the paper", ""]
    lines += [f"- {x}" for x in rep.deviations]
    return "\n".join(lines) + "\n"


def render_study_html(rep: StudyReport) -> str:
    import base64

    e = lambda x: html.escape(str(x), quote=True)  # noqa: E731

    def table(cls: str, head: list[str], rows: list[list[str]], sig: list[list[bool]] | None = None) -> str:
        out = [f'<table class="{cls}"><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
        for i, r in enumerate(rows):
            tds = []
            for j, v in enumerate(r):
                css = ' class="significant"' if sig and sig[i][j] else ""
                tds.append(f"<td{css}>{e(v)}</td>")
            out.append("<tr>" + "".join(tds) + "</tr>")
        return "".join(out) + "</table>"

    def sig_of(c: Cell | None) -> bool:
        return c is not None and is_significant(c.p_adjusted if c.p_adjusted is not None else c.p)

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Study {e(rep.name)}</title>"
             f"<style>{CSS}</style></head><body><h1>Study {e(rep.name)}</h1>",
             f'<p class="note">Generated {e(rep.generated_at)} by vitmed {e(__version__)} from '
             f"<code>{e(rep.registry_url)}</code>; seeds {e(', '.join(map(str, rep.seeds)))}.</p>",
             "<h2>Macro AUC (mean ± SD over seeds)</h2>"]
    rows = [[d] + [_cell_text(rep.table.get(d, {}).get(c)) for c in rep.columns] for d in rep.datasets]
    sig = [[False] + [sig_of(rep.table.get(d, {}).get(c)) for c in rep.columns] for d in rep.datasets]
    parts.append(table("study-table", ["dataset", *rep.columns], rows, sig))
    parts.append(f'<p class="note">{e(rep.p_note)}</p>')
    if _has_bootstrap(rep):
        parts.append("<h2>Macro AUC ± bootstrap SD (the SD the paper reported: over resamples of the test "
                     "images)</h2>")
        parts.append(table("bootstrap-table", ["dataset", *rep.columns],
                           [[d] + [_boot_text(rep.table.get(d, {}).get(c)) for c in rep.columns]
                            for d in rep.datasets]))
    for f in rep.figures:
        data = base64.b64encode(f.png).decode()
        parts.append(f'<figure><img alt="{e(f.title)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{e(f.title)}</figcaption></figure>")
    for d in rep.datasets:
        parts.append(f'<h2 id="{e(slug(d))}">{e(d)}: AUC per finding (mean ± SD over seeds)</h2>')
        fr = rep.per_finding.get(d, {})
        rows = [[f] + [_cell_text(by.get(c)) for c in rep.columns] for f, by in fr.items()]
        sig = [[False] + [sig_of(by.get(c)) for c in rep.columns] for by in fr.values()]
        parts.append(table("finding-table", ["finding", *rep.columns], rows, sig))
    parts.append('<h2 id="protocol">Protocol</h2>')
    parts.append(table("protocol", ["choice", "value"], [list(r) for r in rep.protocol]))
    parts.append("<h3>Where this study differs from the paper's protocol</h3><ul>"
                 + "".join(f"<li>{e(x)}</li>" for x in rep.differences or ["nothing in the training protocol"])
                 + "</ul>")
    parts.append("<h3>Where vitmed knowingly differs from the paper</h3><ul>"
                 + "".join(f"<li>{e(x)}</li>" for x in rep.deviations) + "</ul></body></html>")
    return "\n".join(parts)


def create_study_report(registry: Registry, name: str, out: Path, *, fmt: str = "html",
                        on_event: Listener | None = None) -> WrittenReport:
    """Write the study's report (html, or md with its figures beside it) to ``out``."""
    if fmt not in ("html", "md"):
        raise ConfigError(f"`format` must be html or md, got {fmt!r}")
    out = Path(out).expanduser()
    if out.is_dir():
        raise ConfigError(f"`out` {out} is a folder - give a file name such as {out / ('report.' + fmt)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    rep = gather_study(registry, name)
    files: list[Path] = []
    if fmt == "html":
        atomic_write(out, render_study_html(rep).encode("utf-8"))
    else:
        fig_dir = out.with_name(out.stem + "_files")
        fig_dir.mkdir(exist_ok=True)
        for f in rep.figures:
            atomic_write(fig_dir / f.filename, f.png)
            files.append(fig_dir / f.filename)
        atomic_write(out, render_study_markdown(rep, fig_dir.name).encode("utf-8"))
    return WrittenReport(path=out, format=fmt, datasets=rep.datasets,
                         n_tables=1 + len(rep.datasets) + 1, n_figures=len(rep.figures), figure_files=files)


__all__ = ["StudyReport", "create_study_report", "gather_study", "mean_sd", "render_study_html",
           "render_study_markdown"]
