"""The report as one self-contained HTML page: inline CSS, figures as PNG data URIs,
no scripts and nothing fetched from the network; every user string is escaped."""

from __future__ import annotations

import base64
import html
from typing import Any, Sequence

from .cells import (  # the cells and columns both renderers share
    CMP_COLS,
    FINDING_COLS,
    SUMMARY_COLS,
    _cmp_caption,
    _cmp_cells,
    _comparison_note,
    comparison_warnings,
    _f,
    _finding_cells,
    _provenance_items,
    _short,
    _summary_cells,
)
from .model import ALPHA, DatasetSection, FigureData, Report, RunInfo, is_significant, slug

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1400px;
color:#222;padding:0 1em;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ccd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccd;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#eef0f6}td:first-child,th:first-child,td.name{text-align:left}
tr:nth-child(even) td{background:#fafbfd}
td.significant{font-weight:bold;background:#fde8c8 !important}
td.wrap{white-space:normal;overflow-wrap:anywhere;text-align:left;min-width:6em}
td.hash{white-space:normal;word-break:break-all;text-align:left}
code{word-break:break-all}
.provenance h4{margin:.2em 0 .3em 0}.provref{font-size:.85em;color:#555;margin:.2em 0 1em 0}
caption{text-align:left;font-size:.9em;color:#444;padding-bottom:.2em}
.block{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
.block>table{flex:none}
.provenance{font-size:.8em;color:#444;background:#f6f6f2;border-left:3px solid #bba;padding:.4em .8em;
flex:1 1 16em;max-width:36em;margin-top:.6em}
.provenance dt{font-weight:bold}.provenance dd{margin:0 0 .3em 0}
.note{font-size:.85em;color:#555}
.warning{font-size:.9em;color:#8a4b00}
.figures{display:flex;flex-wrap:wrap;gap:.8em}
figure{margin:0;border:1px solid #dde;padding:.3em;background:#fff}
figure img{display:block;max-width:100%}figcaption{font-size:.8em;color:#555}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


class _Raw(str):
    """A table cell that is already HTML (built from escaped parts)."""


def _sha_html(r: RunInfo) -> str:
    if not r.init_sha256:
        return "-"
    out = f'<code class="sha256" title="{_e(r.init_sha256)}">{_e(_short(r.init_sha256))}</code>'
    if r.init_from:
        out += f'<br><span class="init-from">from {_e(r.init_from)}</span>'
    return out


def _html_table(cls: str, attrs: dict[str, Any], cols: Sequence[str], rows: list[list[str]],
                sig: list[set[int]] | None = None, caption: str | None = None,
                wrap: dict[int, str] | None = None) -> str:
    a = "".join(f' {k}="{_e(v)}"' for k, v in attrs.items())
    out = [f'<table class="{cls}"{a}>']
    if caption:
        out.append(f"<caption>{_e(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr></thead><tbody>")
    for i, cells in enumerate(rows):
        tds = []
        for j, c in enumerate(cells):
            klass = "significant" if sig and j in sig[i] else ("name" if j == 0 else "")
            if wrap and j in wrap:
                klass = f"{klass} {wrap[j]}".strip()
            cattr = f' class="{klass}"' if klass else ""
            text = c if isinstance(c, _Raw) else _e(c)
            text = f"<strong>{text}</strong>" if klass == "significant" else text
            tds.append(f"<td{cattr}>{text}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _prov_id(name: str) -> str:
    return "prov-" + slug(name)


def _html_provenance(rep: Report, sec: DatasetSection) -> str:
    items = _provenance_items(rep, sec, sec.inits)
    out = [f'<aside class="provenance" id="{_prov_id(sec.name)}" data-for="dataset" '
           f'data-dataset="{_e(sec.name)}"><h4>Provenance of {_e(sec.name)}</h4><dl>']
    for label, text, full in items:
        if full:
            short = _short(full)
            body = _e(text).replace(_e(short), f'<code class="sha256" title="{_e(full)}">{_e(short)}</code>', 1)
        else:
            body = _e(text)
        out.append(f"<dt>{_e(label)}</dt><dd>{body}</dd>")
    out.append("</dl></aside>")
    return "".join(out)


def _html_figure(fig: FigureData) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    attrs = f' data-kind="{_e(fig.kind)}"'
    if fig.dataset is not None:
        attrs += f' data-dataset="{_e(fig.dataset)}"'
    if fig.finding is not None:
        attrs += f' data-finding="{_e(fig.finding)}"'
    return (f'<figure class="figure"{attrs}><img alt="{_e(fig.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_e(fig.title)}</figcaption></figure>')


def _html_provref(sec: DatasetSection, note: str | None = None, **attrs: Any) -> str:
    a = "".join(f' data-{k}="{_e(v)}"' for k, v in attrs.items())
    text = f"{_e(note)} " if note else ""
    return (f'<p class="provref"{a}>{text}Provenance: see <a href="#{_prov_id(sec.name)}">'
            f"provenance of {_e(sec.name)}</a>.</p>")


def _anchor(name: str) -> str:
    return "ds-" + slug(name)


def render_html(report: Report) -> str:
    """One self-contained HTML page: inline CSS, figures as data URIs, no scripts."""
    rep = report
    o: list[str] = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>vitmed report</title>", f"<style>{CSS}</style></head><body>",
        '<header><h1>vitmed report</h1>',
        f'<p class="meta">Generated <time datetime="{_e(rep.generated_at)}">{_e(rep.generated_at)}</time> '
        f'by vitmed <span class="version">{_e(rep.vitmed_version)}</span> from the registry at '
        f"<code>{_e(rep.registry_url)}</code>.</p>",
        '<p class="note">For each dataset and initialisation the latest evaluation on the test part '
        "is shown (imported evaluations under their name), grouped by training resolution; a model "
        "tuned other than fully is named with its tuning, e.g. <em>dinov2 [head]</em> for a linear "
        "probe. AUC is the macro average over findings; "
        f"mean ± SD and the 95% percentile interval are over {rep.n_resamples} bootstrap resamples "
        f"of the test images (seed {rep.seed}); the SD is that of the resampled macro averages, not "
        "of the findings' AUCs pooled. Sensitivity, specificity and accuracy are at the threshold "
        "chosen on the validation part (averaged over findings in the summary); \"-\" where none "
        f"was stored. In p-value tables, bold cells have p &lt; {ALPHA}; the FDR adjustment is "
        "Benjamini–Hochberg over all pairs × findings compared together in one vitmed compare call (the macro rows over the pairs).</p>",
        '<nav><ul class="toc">',
    ]
    o += [f'<li><a href="#{_anchor(s.name)}">{_e(s.name)}</a></li>' for s in rep.datasets]
    o.append("</ul></nav></header>")
    if rep.figures:
        o.append('<section class="overview"><h2>Overview</h2><div class="figures">')
        o += [_html_figure(f) for f in rep.figures]
        o.append("</div></section>")
    for sec in rep.datasets:
        ds = {"data-dataset": sec.name}
        o.append(f'<section class="dataset" id="{_anchor(sec.name)}" data-dataset="{_e(sec.name)}">')
        o.append(f"<h2>Dataset {_e(sec.name)}</h2>")
        o.append("<h3>AUC per initialisation</h3><div class=\"block\">")
        o.append(_html_table("auc-table", ds, SUMMARY_COLS, [_summary_cells(r) for r in sec.inits]))
        o.append(_html_provenance(rep, sec))
        o.append("</div><h3>Per finding</h3>")
        o.append(_html_table("finding-table", ds, FINDING_COLS, [_finding_cells(r) for r in sec.per_finding]))
        o.append(_html_provref(sec, table="finding-table"))
        if sec.comparisons:
            o.append("<h3>Comparisons (p-values)</h3>")
        shown = {r.evaluation_id for r in sec.inits}
        for c in sec.comparisons:
            sig = []
            for r in c.rows:
                cells = set()
                if is_significant(r.p_value):
                    cells.add(5)
                if is_significant(r.p_delong):
                    cells.add(6)
                if is_significant(r.p_adjusted):
                    cells.add(7)
                sig.append(cells)
            o.append(_html_table("pvalue-table", {**ds, "data-comparison": c.id}, CMP_COLS,
                                 [_cmp_cells(r) for r in c.rows], sig, _cmp_caption(c)))
            o += [f'<p class="warning" data-comparison="{c.id}"><strong>Warning:</strong> {_e(w)}</p>'
                  for w in comparison_warnings(c)]
            o.append(_html_provref(sec, _comparison_note(c, shown), table="pvalue-table", comparison=c.id))
        if sec.figures:
            o.append('<h3>Figures</h3><div class="figures">')
            o += [_html_figure(f) for f in sec.figures]
            o.append("</div>")
        if sec.runs:
            o.append("<h3>Runs</h3>")
            o.append(_html_table(
                "runs-table", ds,
                ("run", "initialisation", "arch", "init sha256", "split", "seed", "status",
                 "epochs", "best epoch", "best val AUC", "code version", "started", "tuning",
                 "image size (px)"),
                [[str(r.id), r.init_name, r.arch_label, _Raw(_sha_html(r)), r.split, str(r.seed), r.status,
                  str(r.epochs_done), "-" if r.best_epoch is None else str(r.best_epoch),
                  _f(r.best_val_macro_auc), r.code_version or "-", r.started_at or "-", r.tune,
                  "-" if r.image_size is None else str(r.image_size)] for r in sec.runs],
                wrap={1: "wrap", 2: "wrap", 3: "hash", 4: "wrap", 10: "hash", 11: "wrap"},
            ))
        o.append("</section>")
    o.append("</body></html>\n")
    return "\n".join(o)
