"""``vitmed demo``: the whole study in miniature on synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from ..demo import DemoSettings, run_demo
from ._common import EventPrinter, JsonOpt, console, err_console, print_json, want_json


def demo(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for the demo's registry, data, checkpoints and report "
                     "(must not hold a registry yet).", file_okay=False),
    ] = Path("vitmed-demo"),
    smallest: Annotated[
        bool, typer.Option("--smallest", help="Tiny sizes that finish in seconds (a smoke test; "
                           "too small for the p-values to mean much).")
    ] = False,
    dinov2_file: Annotated[
        Optional[Path],
        typer.Option("--dinov2-file", exists=True, dir_okay=False,
                     help="Also fine-tune from this DINOv2 release file (dinov2_vit*14_pretrain.pth); "
                     "its ViT is large, so this is slow on a CPU."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for data, splits, training and bootstrap.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Run the study in miniature: two synthetic datasets, three fine-tunings, predictions,
    paired statistics and an HTML report, in a fresh registry under --out.

    It ingests a synthetic 'source' dataset (standing in for MIMIC-CXR) and a 'target'
    (standing in for VinDr-CXR), fine-tunes a small ViT on the source, registers it as an
    initialisation, fine-tunes the target from random and from that init, compares them
    with paired bootstrap and DeLong tests (FDR-adjusted) and writes the report. About a minute
    and a half on 2 CPU cores.

    Example: vitmed demo --out vitmed-demo
    """
    as_json = want_json(ctx, json_out)
    settings = DemoSettings.smallest() if smallest else DemoSettings()
    settings = DemoSettings(**{**settings.__dict__, "seed": seed})
    with EventPrinter(console=err_console if as_json else console) as on_event:
        result = run_demo(out, settings, dinov2_file=dinov2_file, on_event=on_event)
    if as_json:
        print_json(result.to_dict())
        return
    from .compare import _render

    console.print()
    _render(result.comparison)
    console.print(Text(f"\ndemo finished in {result.seconds:.0f} s"))
    console.print(Text(f"report:   {result.report_path}"))
    console.print(Text(f"registry: {result.registry_url}"))
    console.print(Text(f"explore:  vitmed --db {result.registry_url} runs list"))
