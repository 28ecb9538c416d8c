"""``vitmed evals``: stored evaluations (predictions of a model on a dataset part)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from .. import catalog
from ..choices import UncertainPolicy
from ._common import EvalArg, JsonOpt, Part, YesOpt, cli_message, confirm_delete, console, err_console, fmt, print_json, print_record, print_table, state, want_json

app = typer.Typer(help="Evaluations: list, show, import predictions made elsewhere, delete.",
                  no_args_is_help=True)


@app.command("list")
def list_(
    ctx: typer.Context,
    dataset: Annotated[Optional[str], typer.Option(help="Only evaluations on this dataset.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List evaluations with their run, dataset, split part and macro AUC.

    Example: vitmed evals list --dataset vindr
    """
    rows = catalog.list_evaluations(state(ctx).registry(write=False), dataset=dataset)
    if want_json(ctx, json_out):
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "source", "run_id", "init", "dataset", "split", "part",
                           "n_images", "macro_auc"],
                    title="evaluations", empty="no evaluations yet - run vitmed predict or vitmed evals import")


@app.command("show")
def show(ctx: typer.Context, evaluation_id: EvalArg, json_out: JsonOpt = False) -> None:
    """Show one evaluation with its per-finding AUC, sensitivity, specificity and accuracy.

    Example: vitmed evals show 2 --json
    """
    info = catalog.evaluation_detail(state(ctx).registry(write=False), evaluation_id)
    if want_json(ctx, json_out):
        print_json(info)
        return
    metrics = info.pop("metrics")
    info.pop("auc")
    print_record(info, title=f"evaluation {evaluation_id}")
    print_table(metrics, ["finding", "auc", "threshold", "sensitivity", "specificity", "accuracy",
                          "n_positive", "n_negative"], title="per finding")


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="CSV: image key column, one probability column per finding.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset the images belong to.")],
    name: Annotated[str, typer.Option("--name", help="Label of this model in comparisons (--init NAME).")],
    split: Annotated[Optional[str], typer.Option(help="Split whose --part must hold every image.")] = None,
    part: Annotated[Part, typer.Option(help="Split part the predictions were made on.")] = Part.test,
    key_col: Annotated[Optional[str], typer.Option(
        "--key-col", help="Image key column (default: image_id, key or Path if present, else the first).")] = None,
    uncertain: Annotated[UncertainPolicy, typer.Option(help="Uncertain labels (-1) count as 0, 1, or are left out.")] = UncertainPolicy.zeros,
    json_out: JsonOpt = False,
) -> None:
    """Register predictions made elsewhere (CSV of probabilities) as an evaluation.

    Columns are named by canonical or native finding names; labels come from the registry.

    Example: vitmed evals import external.csv --dataset vindr --split official --name chexnet
    """
    from ..evaluations import import_evaluation

    out = import_evaluation(
        state(ctx).registry(), file, dataset=dataset, name=name, split=split, part=part.value,
        key_col=key_col, uncertain=uncertain.value,
    )
    if want_json(ctx, json_out):
        print_json(out)
    else:
        console.print(Text(f"imported evaluation {out['evaluation_id']} ({name}): {out['n_images']} images, "
                           f"macro AUC {fmt(out['macro_auc'])}"))
        print_table([{"finding": k, "auc": v} for k, v in out["findings"].items()], ["finding", "auc"])
    for warning in out["warnings"]:
        err_console.print(Text("warning: ", style="yellow") + Text(cli_message(warning)), soft_wrap=True)


@app.command("delete")
def delete(
    ctx: typer.Context,
    evaluation_id: EvalArg,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete an evaluation with its predictions and the comparisons that use it.

    Example: vitmed evals delete 2 --yes
    """
    confirm_delete(ctx, yes, f"delete evaluation {evaluation_id} and its predictions?",
                   lambda: catalog.delete_evaluation(state(ctx).registry(), evaluation_id),
                   json_out, "deleted evaluation {id}")
