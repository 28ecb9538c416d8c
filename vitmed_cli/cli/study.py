"""``vitmed study``: the whole study as one command - init, plan, run, status, cell."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from ._common import EventPrinter, JsonOpt, console, err_console, print_json, print_table, state, want_json

app = typer.Typer(help="The whole study from one study file: init, plan, run, status.", no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(metavar="FILE", help="The study file (TOML; vitmed study init writes one).",
                                         exists=True, dir_okay=False, show_default=False)]


class PresetName(str, Enum):
    tayebi2024 = "tayebi2024"
    demo = "demo"


class ExecutorName(str, Enum):
    local = "local"
    slurm = "slurm"


@app.command("init")
def init(
    ctx: typer.Context,
    preset: Annotated[PresetName, typer.Option("--preset", help="tayebi2024 (the paper: edit the paths) or demo "
                                              "(synthetic data, minutes on a CPU).")] = PresetName.tayebi2024,
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="Where to write the study file.")]
    = Path("study.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a study file from a preset.

    Example: vitmed study init --preset demo --out study.toml
    """
    from ..study import write_preset

    path = write_preset(preset.value, out, force=force)
    if want_json(ctx, json_out):
        print_json({"path": str(path), "preset": preset.value})
        return
    console.print(Text(f"wrote {path} (preset {preset.value}) - next: vitmed study plan {path}"))


def _spec(path: Path, check_paths: bool = True):
    from ..study import load_study

    return load_study(path, check_paths=check_paths)


@app.command("plan")
def plan(ctx: typer.Context, file: FileArg, json_out: JsonOpt = False) -> None:
    """List every stage and cell of the study (ingest, split, register, fine-tune, predict, compare,
    report) with what the registry already holds.

    Example: vitmed study plan study.toml --json
    """
    from ..study import study_plan

    spec = _spec(file)
    result = study_plan(state(ctx).registry(write=False), spec)
    if want_json(ctx, json_out):
        print_json(result)
        return
    print_table(result["cells"], ["key", "stage", "dataset", "init", "seed", "state", "run_id", "evaluation_id"],
                title=f"study {spec.name}: {len(result['cells'])} cells")


@app.command("status")
def status(ctx: typer.Context, file: FileArg, json_out: JsonOpt = False) -> None:
    """Show each cell's state (done, running, failed with its error, pending) and its ids.

    With a PostgreSQL registry on a machine where Slurm's squeue answers, the cells' Slurm jobs
    are asked too (job_state): a job waiting in the queue or running makes its cell running; a
    cancelled or failed one leaves it pending, for the next study run to resume.

    Example: vitmed study status study.toml --json
    """
    from ..study import study_status

    spec = _spec(file, check_paths=False)
    result = study_status(state(ctx).registry(write=False), spec)
    if want_json(ctx, json_out):
        print_json(result)
        return
    print_table(result["cells"], ["key", "state", "job_id", "job_state", "run_id", "evaluation_id", "comparison_id",
                                  "error"],
                title=f"study {spec.name}: " + ", ".join(f"{n} {k}" for k, n in sorted(result["counts"].items())))


@app.command("run")
def run(
    ctx: typer.Context,
    file: FileArg,
    executor: Annotated[ExecutorName, typer.Option("--executor", help="local: processes here, one per free "
                                                  "GPU (one at a time on the CPU); slurm: one Slurm job per cell "
                                                  "(needs a PostgreSQL registry).")] = ExecutorName.local,
    max_parallel: Annotated[Optional[int], typer.Option("--max-parallel", min=1, help="At most this many jobs at "
                                                       "once. Default: one per GPU (local), unlimited (slurm).")]
    = None,
    gpus: Annotated[Optional[int], typer.Option("--gpus", min=1, help="Slurm: GPUs per job.")] = None,
    partition: Annotated[Optional[str], typer.Option("--partition", help="Slurm: partition.")] = None,
    time_limit: Annotated[Optional[str], typer.Option("--time", help="Slurm: time limit per job, e.g. 04:00:00.")]
    = None,
    account: Annotated[Optional[str], typer.Option("--account", help="Slurm: account to charge.")] = None,
    cpus: Annotated[Optional[int], typer.Option("--cpus", min=1, help="Slurm: CPUs per job (default 2).")] = None,
    mem_gb: Annotated[Optional[float], typer.Option("--mem-gb", help="Slurm: memory per job in GB (default: the "
                                                    "partition's).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run what is missing of the study, in dependency order; run it again after an interruption and
    it resumes, training nothing twice.

    Example: vitmed study run study.toml --executor local
    """
    from ..study import SlurmOptions, create_executor, run_study

    spec = _spec(file)
    st = state(ctx)
    registry = st.registry()
    slurm = SlurmOptions(gpus=gpus or spec.slurm.gpus, partition=partition or spec.slurm.partition,
                         time=time_limit or spec.slurm.time, account=account or spec.slurm.account,
                         cpus=cpus or spec.slurm.cpus, mem_gb=mem_gb or spec.slurm.mem_gb)
    ex = create_executor(executor.value, registry, slurm=slurm)
    db_url = registry.engine.url.render_as_string(hide_password=False)
    as_json = want_json(ctx, json_out)
    with EventPrinter(console=err_console if as_json else console) as on_event:
        result = run_study(registry, spec, executor=ex, db_url=db_url, max_parallel=max_parallel,
                           on_event=on_event)
    if as_json:
        print_json(result.to_dict())
    else:
        console.print(Text(f"study {result.study}: {result.n_done} of {result.n_cells} cells done "
                           f"({len(result.executed)} this time) in {result.seconds:.0f} s"))
        for key, error in result.failed.items():
            err_console.print(Text(f"failed: {key}: {error.splitlines()[0]}"))
        if result.blocked:
            err_console.print(Text(f"waiting on failed cells: {', '.join(result.blocked)}"))
    if result.failed:
        raise typer.Exit(1)


@app.command("cell")
def cell(
    ctx: typer.Context,
    file: FileArg,
    keys: Annotated[list[str], typer.Argument(metavar="KEY...", help="Cell keys (see vitmed study plan), run "
                                              "in this order.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Run cells of the study here (what executors' jobs run); a cell already done is skipped.

    Example: vitmed study cell study.toml finetune/vindr/dinov2/0
    """
    from ..study import run_cell

    spec = _spec(file)
    registry = state(ctx).registry()
    done = []
    with EventPrinter(console=err_console) as on_event:
        for key in keys:
            done.append(run_cell(registry, spec, key, on_event=on_event).to_dict())
    if want_json(ctx, json_out):
        print_json(done)
        return
    for d in done:
        console.print(Text(f"{d['key']}: {d['state']}"))
