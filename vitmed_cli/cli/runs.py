"""``vitmed runs``: fine-tuning runs and their metrics."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import catalog
from ..choices import RunFilter
from ._common import JsonOpt, RunArg, YesOpt, confirm_delete, console, print_json, print_record, print_table, state, want_json

app = typer.Typer(help="Fine-tuning runs: list, show, delete, prune.", no_args_is_help=True)


@app.command("list")
def list_(
    ctx: typer.Context,
    dataset: Annotated[Optional[str], typer.Option(help="Only runs on this dataset.")] = None,
    status: Annotated[Optional[RunFilter], typer.Option(
        help="Only runs with this status; stale = running, but its process is gone.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List runs with their status and best validation AUC.

    Example: vitmed runs list --dataset vindr
    """
    rows = catalog.list_runs(state(ctx).registry(write=False), dataset=dataset,
                             status=status.value if status else None)
    if want_json(ctx, json_out):
        print_json(rows)
    else:
        print_table(
            rows,
            ["id", "dataset", "split", "init", "arch", "tune", "seed", "status",
             ("epochs_done", "epochs"), ("best_val_macro_auc", "best val AUC")],
            title="runs", empty=f"none with status {status.value}" if status else "no runs yet - run vitmed finetune",
        )


@app.command("show")
def show(ctx: typer.Context, run_id: RunArg, json_out: JsonOpt = False) -> None:
    """Show one run: configuration, provenance, checkpoints and per-epoch metrics.

    Example: vitmed runs show 3 --json
    """
    info = catalog.run_detail(state(ctx).registry(write=False), run_id)
    if want_json(ctx, json_out):
        print_json(info)
        return
    epochs = info.pop("epochs")
    ckpts = info.pop("checkpoints")
    info.pop("init_checkpoint")
    for raw in ("owner_host", "owner_pid", "owner_token", "heartbeat_at"):  # summed up in "owner"
        info.pop(raw, None)
    print_record(info, title=f"run {run_id}")
    print_table(epochs, ["epoch", "train_loss", "val_loss", "val_macro_auc", "seconds"], title="epochs")
    print_table(ckpts, ["id", "role", "epoch", "sha256", "path"], title="checkpoints")


@app.command("delete")
def delete(
    ctx: typer.Context,
    run_id: RunArg,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete a run with its metrics, checkpoints and evaluations.

    Example: vitmed runs delete 3 --yes
    """
    confirm_delete(ctx, yes, f"delete run {run_id} with its metrics, checkpoints and evaluations?",
                   lambda: catalog.delete_run(state(ctx).registry(), run_id),
                   json_out, "deleted run {id}")


@app.command("prune")
def prune(
    ctx: typer.Context,
    run_ids: Annotated[Optional[list[int]], typer.Option(
        "--run", help="Only this run (repeat). Default: every run that ended.")] = None,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Free disk: delete resume.pt (the optimiser state, about 1 GB for a ViT-B) of runs that ended.

    Best and last checkpoints stay, so predict and --init run:ID work as before; an interrupted run,
    or one still training, keeps its resume.pt.
    Example: vitmed runs prune --yes
    """
    registry = state(ctx).registry()
    if not catalog.prunable_runs(registry, run_ids):
        done = {"pruned": [], "kept": [], "bytes_freed": 0}
        print_json(done) if want_json(ctx, json_out) else console.print("nothing to prune")
        return
    confirm_delete(ctx, yes, "delete resume.pt of every run that ended?" if not run_ids else
                   f"delete resume.pt of run(s) {', '.join(map(str, run_ids))}?",
                   lambda: {**(out := catalog.prune_runs(registry, run_ids)),
                            "n": len(out["pruned"]), "mb": out["bytes_freed"] / 1e6},
                   json_out, "pruned {n} run(s), {mb:.1f} MB freed")

