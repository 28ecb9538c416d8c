"""``vitmed compare``: is initialisation A better than B? Paired statistics from the registry."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from .._util import format_p as _p
from .._util import output_file
from ..choices import DEFAULT_ALPHA, DEFAULT_RESAMPLES
from ..errors import InputError
from ..registry.models import MACRO
from ._common import EventPrinter, JsonOpt, Part, cli_message, console, fmt, print_json, state, want_json


def _seeds_side(pair: dict, side: str) -> str:
    seeds = pair[f"seeds_{side}"]
    n = pair[f"n_seeds_{side}"]
    named = ", ".join("?" if s is None else str(s) for s in seeds)
    return f"{n} seed{'s' if n != 1 else ''}: {named}"


def _mean_sd(mean, sd) -> str:
    return fmt(mean) if sd is None else f"{fmt(mean)} ± {fmt(sd)}"


def _render_seeds(pair: dict) -> None:
    """One pooled-seeds comparison: AUC mean ± SD over seeds, p-values of the seed means."""
    table = Table(title=Text.assemble(
        (pair["a"], "bold"), f" (A, {_seeds_side(pair, 'a')}, tune {pair.get('tune_a') or '-'}) vs ",
        (pair["b"], "bold"), f" (B, {_seeds_side(pair, 'b')}, tune {pair.get('tune_b') or '-'}) - "
        f"{pair['n_images']} images, comparison {pair['comparison_id']}",
    ))
    per_seed = pair.get("per_seed") or []
    columns = ["finding", "AUC A mean ± SD", "AUC B mean ± SD", "diff A-B [95% CI]", "bootstrap p",
               "FDR p", *[f"p seed {p['seed']}" for p in per_seed], "better"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("finding", "better") else "right", overflow="fold")
    seed_rows = [{r["finding"]: r for r in p["findings"] + [p["macro"]]} for p in per_seed]
    for r in pair["findings"] + [pair["macro"]]:
        macro = r["finding"] == MACRO
        table.add_row(
            Text("macro average", style="bold") if macro else Text(r["finding"]),
            _mean_sd(r["auc_a"], r.get("sd_a")), _mean_sd(r["auc_b"], r.get("sd_b")),
            Text(f"{r['diff']:+.3f} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"),
            _p(r["p_value"]), _p(r["p_adjusted"]),
            *[_p(rows[r["finding"]]["p_value"]) for rows in seed_rows],
            Text({pair["a"]: "A", pair["b"]: "B"}.get(r["better"], r["better"] or "-")),
        )
    console.print(table)


def _render(result: dict) -> None:
    seeds = any(p.get("mode") == "seeds" for p in result["pairs"])
    for pair in result["pairs"]:
        if pair.get("mode") == "seeds":
            _render_seeds(pair)
            _render_notes(pair)
            continue
        table = Table(title=Text.assemble(
            (pair["a"], "bold"), f" (A, tune {pair.get('tune_a') or '-'}) vs ", (pair["b"], "bold"),
            f" (B, tune {pair.get('tune_b') or '-'}) - {pair['n_images']} images, comparison "
            f"{pair['comparison_id']}",
        ))
        for col in ("finding", "AUC A", "AUC B", "diff A-B [95% CI]", "bootstrap p", "DeLong p",
                    "FDR p", "better"):
            table.add_column(col, justify="left" if col in ("finding", "better") else "right",
                             overflow="fold")
        for r in pair["findings"] + [pair["macro"]]:
            macro = r["finding"] == MACRO
            table.add_row(
                Text("macro average", style="bold") if macro else Text(r["finding"]),
                fmt(r["auc_a"]), fmt(r["auc_b"]),
                Text(f"{r['diff']:+.3f} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"),
                _p(r["p_value"]), _p(r["p_delong"]), _p(r["p_adjusted"]),
                Text({pair["a"]: "A", pair["b"]: "B"}.get(r["better"], r["better"] or "-")),
            )
        console.print(table)
        _render_notes(pair)
    if seeds:
        family = ("the findings of this comparison (macro row on its own)" if len(result["pairs"]) == 1
                  else "all pairs x findings of this call (macro rows over the pairs)")
        per_seed = any(p.get("per_seed") for p in result["pairs"])
        console.print(Text(
            f"{result['n_resamples']} paired bootstrap resamples (seed {result['seed']}), each drawing the "
            "test images once for every seed of both inits; AUC = mean ± SD over seeds (SD with ddof=1; "
            "bootstrap SDs in --json); p-values test the difference of the seed means"
            + ("; p seed s: seed s of A against seed s of B on the same resamples, not adjusted"
               if per_seed else "")
            + f". FDR family: {family}, Benjamini-Hochberg; 'better' where FDR p < {result['alpha']}; "
            "no DeLong p (it tests two single models, not means over seeds).", style="dim"))
        return
    console.print(Text(
        f"{result['n_resamples']} paired bootstrap resamples (seed {result['seed']}); "
        f"FDR = Benjamini-Hochberg over all pairs x findings (macro rows: over the pairs); 'better' where "
        f"FDR p < {result['alpha']}; "
        "macro DeLong p is not defined (DeLong tests one AUC, not an average).", style="dim"))


def _render_notes(pair: dict) -> None:
    if pair["skipped_findings"]:
        skipped = ", ".join(f"{s['finding']} ({s['reason']})" for s in pair["skipped_findings"])
        console.print(Text("not compared: ", style="yellow") + Text(skipped))
    for text in pair.get("warnings") or ():
        console.print(Text("warning: ", style="yellow") + Text(cli_message(text)))


def _open_csv(target: str):
    """The --csv output, opened before any computing so a bad path fails first and stores nothing."""
    if target == "-":
        return sys.stdout
    path = output_file(target, "csv")
    try:
        # append mode checks the path without emptying an existing file; truncated on success
        return open(path, "a", newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"--csv {target}: cannot write it ({exc.strerror or exc}) - choose a path in an "
            "existing, writable folder"
        ) from exc


def _write_csv(result: dict, out) -> None:
    from .. import compare as compare_lib

    rows = compare_lib.comparison_rows(result)
    if out is not sys.stdout:
        out.seek(0)
        out.truncate()
    w = csv.DictWriter(out, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)


def compare(
    ctx: typer.Context,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset whose evaluations --init picks.")] = None,
    init: Annotated[Optional[list[str]], typer.Option(
        "--init", help="An initialisation (dinov2, imagenet, run:ID, or an imported --name); "
        "its latest evaluation on --part. Repeat: 2 or more.")] = None,
    eval_ids: Annotated[Optional[list[int]], typer.Option("--eval", help="An evaluation id. Repeat; may be mixed with --run (runs are listed first, as A).")] = None,
    run_ids: Annotated[Optional[list[int]], typer.Option("--run", help="A run id (its latest evaluation on --part). Repeat.")] = None,
    part: Annotated[Part, typer.Option(help="Split part the evaluations were made on.")] = Part.test,
    n_resamples: Annotated[int, typer.Option("--n-resamples", min=10, help="Paired bootstrap resamples; the smallest p-value is 2/(N+1), so p < 0.001 needs 2,000 or more.")] = DEFAULT_RESAMPLES,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
    intersect: Annotated[bool, typer.Option(
        "--intersect", help="Compare on the images both evaluations hold (and leave out disputed labels) "
        "instead of refusing.")] = False,
    all_seeds: Annotated[bool, typer.Option(
        "--all-seeds", help="With --init: take every seed's latest evaluation and compare per pair, "
        "seed s of A against seed s of B (not pooled); an init with one evaluation meets every seed. "
        "FDR runs over all those pairs.")] = False,
    over_seeds: Annotated[bool, typer.Option(
        "--over-seeds", help="With --init: pool each init's seeds (its latest evaluation per seed) into one "
        "comparison per pair of inits. Every bootstrap resample draws the test images once for all seeds of "
        "both inits and compares the mean AUC over seeds; the table shows AUC mean ± SD over seeds and how "
        "many seeds each side has. Stored as one comparison (mode seeds).")] = False,
    per_seed: Annotated[bool, typer.Option(
        "--per-seed", help="With --over-seeds: add a p-value per seed, seed s of A against seed s of B "
        "(matched by seed number) on the same resamples.")] = False,
    alpha: Annotated[float, typer.Option(help="Significance level for the 'better' column (FDR-adjusted p).")] = DEFAULT_ALPHA,
    allow_mixed_tuning: Annotated[bool, typer.Option(
        "--allow-mixed-tuning", help="Compare runs of different tuning modes (a --tune head probe with a "
        "full fine-tune); refused by default, as the difference mixes init and tuning.")] = False,
    csv_out: Annotated[Optional[str], typer.Option(
        "--csv", help="Also write the rows as CSV to FILE ('-' = stdout instead of the table).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare initialisations with a paired bootstrap, DeLong's test and BH-adjusted p-values.

    Two evaluations are aligned by image; different images or labels are refused
    unless --intersect; only shared findings are compared (the others are named).
    Three or more models: every pair, FDR over all pairs x findings. Results are
    stored in the registry for vitmed report.

    --csv FILE is checked before anything is computed or stored.

    --json prints one JSON document. Two models: the pair object itself,
    {"comparison_id", "a", "b", "n_images", "findings", "macro", ...}.
    Three or more models: {"group_id": ID, "pairs": LIST}, where LIST holds
    one pair object (as above) per pair of models. Each pair names its runs' tuning
    (tune_a, tune_b: all, head, last:N); a probe is never paired with a full fine-tune
    unless --allow-mixed-tuning. With --over-seeds each pair object also holds mode "seeds",
    evaluations_a/_b, seeds_a/_b, n_seeds_a/_b, over_seeds (mean, SD, bootstrap SD and per-seed
    AUCs per finding), per_seed (with --per-seed) and, per finding, sd_a/sd_b and
    bootstrap_sd_a/_b.

    Example: vitmed compare --dataset vindr --init dinov2 --init imagenet
    """
    as_json = want_json(ctx, json_out)
    if as_json and csv_out == "-":
        raise InputError("--json and --csv - both write to stdout - pick one, or give --csv a file name")
    registry = state(ctx).registry()
    existed = csv_out not in (None, "-") and Path(csv_out).expanduser().exists()
    out = _open_csv(csv_out) if csv_out is not None else None
    try:
        result = _run(registry, dataset=dataset, inits=init or [], evals=eval_ids or [],
                      runs=run_ids or [], part=part.value, n_resamples=n_resamples, seed=seed,
                      intersect=intersect, all_seeds=all_seeds, alpha=alpha,
                      allow_mixed_tuning=allow_mixed_tuning, over_seeds=over_seeds, per_seed=per_seed)
        if out is not None:
            _write_csv(result, out)
    except BaseException:
        if out is not None and out is not sys.stdout:
            out.close()
            if not existed:  # leave no empty file behind a failed comparison
                Path(csv_out).expanduser().unlink(missing_ok=True)
        raise
    if out is not None and out is not sys.stdout:
        out.close()
    if as_json:
        pairs = [{k: v for k, v in p.items()} for p in result["pairs"]]
        print_json(pairs[0] if len(pairs) == 1 else {"group_id": result["group_id"], "pairs": pairs})
    elif csv_out != "-":
        _render(result)


def _run(registry, **kwargs) -> dict:
    """compare_lib.compare with progress bars on stderr."""
    from .. import compare as compare_lib

    with EventPrinter() as on_event:
        return compare_lib.compare(registry, on_event=on_event, **kwargs)
