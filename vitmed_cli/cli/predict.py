"""``vitmed predict``: score a split part with a trained run and store the evaluation."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.text import Text

from ..choices import DEFAULT_PREDICT_BATCH, Device
from ..choices import RunRole as Role
from ._common import EventPrinter, JsonOpt, Part, console, fmt, print_json, print_table, state, want_json


def predict(
    ctx: typer.Context,
    run: Annotated[int, typer.Option("--run", metavar="RUN_ID", help="The trained run to predict with.")],
    dataset: Annotated[Optional[str], typer.Option(
        help="Dataset to score. Default: the run's own; another dataset is scored on the findings both share.")] = None,
    split: Annotated[Optional[str], typer.Option(
        help="Split of that dataset. Default: the run's split (own dataset) or the newest split.")] = None,
    part: Annotated[Part, typer.Option(help="Split part to score.")] = Part.test,
    checkpoint: Annotated[Role, typer.Option(help="The run's best (by validation macro AUC) or last epoch.")] = Role.best,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = DEFAULT_PREDICT_BATCH,
    device: Annotated[Device, typer.Option(help="Where to run the model.")] = Device.auto,
    name: Annotated[Optional[str], typer.Option(help="Name of the stored evaluation.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Store the probability of every finding for every image of a split part, with AUC per finding
    and sensitivity/specificity/accuracy at the threshold chosen on the validation part.

    Example: vitmed predict --run 3 --part test --json
    """
    from ..evaluations import predict as predict_lib

    with EventPrinter() as on_event:
        result = predict_lib(
            state(ctx).registry(), run_id=run, dataset=dataset, split=split, part=part.value,
            checkpoint=checkpoint.value, batch_size=batch_size, device=device.value, name=name,
            on_event=on_event,
        )
    if want_json(ctx, json_out):
        print_json(result.to_dict())
        return
    print_table(result.metrics, ["finding", "auc", "threshold", "sensitivity", "specificity",
                                 "accuracy", "n_positive", "n_negative"],
                title=f"evaluation {result.evaluation_id}: run {result.run_id} on "
                      f"{result.dataset}/{result.split}:{result.part} ({result.n_images} images)")
    console.print(Text(f"macro AUC {fmt(result.macro_auc, 4)}"))
    for finding, why in result.undefined.items():
        console.print(Text(f"n/a for {finding}: {why}"))
    for finding, why in result.skipped_reasons.items():
        console.print(Text(f"not scored: {finding} ({why})"))
