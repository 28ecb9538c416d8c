"""Study cells as real jobs: submitit on a Slurm cluster, and submitit's local subprocesses.

The Slurm variants need a running cluster (CI starts a one-node one with .ci/start-slurm
and sets VITMED_TEST_SLURM=1, which turns a missing cluster into a failure); without one
they skip, and the local variants run the same code path with real subprocesses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from vitmed_cli import open_registry
from vitmed_cli.errors import ConfigError
from vitmed_cli.registry.models import Evaluation, Run, StudyCell
from vitmed_cli.study import (
    DemoSettings,
    build_plan,
    cell_argv,
    cell_env,
    create_executor,
    demo_study_text,
    load_study,
    run_cell,
)
from vitmed_cli.study.executors import SlurmOptions as StudySlurmOptions
from vitmed_cli.study.slurm import (
    SlurmExecutor,
    SlurmOptions,
    SubmititLocalExecutor,
    parse_slurm_time,
    state_from_files,
)
from vitmed_cli.study.spec import parse_study

# Read at import: the autouse workspace fixture clears VITMED_* variables before each test.
SLURM_REQUIRED = os.environ.get("VITMED_TEST_SLURM") == "1"
FINAL = {"done", "failed", "cancelled"}
ORDER = ["pending", "running", "done", "failed", "cancelled"]


@functools.lru_cache(maxsize=None)
def slurm_answers() -> bool:
    """Once per test process: a controller that is down makes sinfo wait for its timeout."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def need_slurm() -> None:
    if slurm_answers():
        return
    if SLURM_REQUIRED:
        pytest.fail("VITMED_TEST_SLURM=1 but no Slurm cluster answers sinfo (see .ci/start-slurm's output)")
    pytest.skip("no Slurm cluster running: start one with .ci/start-slurm")


def make_executor(kind: str, tmp_path: Path, **options):
    if kind == "slurm":
        need_slurm()
        return SlurmExecutor(SlurmOptions(cpus=1, time_min=10, **options), tmp_path / "jobs")
    return SubmititLocalExecutor(tmp_path / "jobs", **options)


@pytest.fixture(params=["local", "slurm"])
def kind(request) -> str:
    return request.param


def watch(executor, job_id: str, *, until=lambda s: s in FINAL, polls: int = 3000) -> list[str]:
    """The distinct states seen, in order, until ``until`` holds (bounded by polls, not time)."""
    seen: list[str] = []
    for _ in range(polls):
        state = executor.state(job_id)
        if not seen or seen[-1] != state:
            seen.append(state)
        if until(state):
            return seen
        time.sleep(0.1)
    pytest.fail(f"job {job_id} never got there; states seen: {seen}")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def assert_in_order(seen: list[str], final: str) -> None:
    assert seen[-1] == final, seen
    assert "unknown" not in seen, seen
    assert [ORDER.index(s) for s in seen] == sorted(ORDER.index(s) for s in seen), seen


def test_a_command_runs_to_done_with_its_env(kind, tmp_path):
    ex = make_executor(kind, tmp_path)
    out, token = tmp_path / "out.txt", uuid.uuid4().hex
    argv = python("import os, time, pathlib; time.sleep(2); "
                  f"pathlib.Path({str(out)!r}).write_text(os.environ['VITMED_CELL_TOKEN']); print('trained')")
    argv += ["--db", "postgresql+psycopg://vitmed:s3cret@db.example:5432/vitmed"]
    job = ex.submit("toy/dinov2/seed0", argv, log_dir=tmp_path / "logs", env={"VITMED_CELL_TOKEN": token})
    seen = watch(ex, job)
    assert_in_order(seen, "done")
    assert "running" in seen
    assert out.read_text() == token
    log = (tmp_path / "logs" / "toy__dinov2__seed0.log").read_text().splitlines()
    assert log[0].startswith(f"== job {job.split('-')[0]} on ")
    # the command line, with the registry URL's password starred
    assert log[0].endswith(f": {shlex.join(argv[:-2])} --db postgresql+psycopg://vitmed:***@db.example:5432/vitmed")
    assert log[1:] == ["trained"]
    # the job's pickle holds its environment (a registry password, say): the folder is private
    assert (tmp_path / "jobs").stat().st_mode & 0o777 == 0o700
    # A later `study run` (a fresh executor over the same folder) reads the same state.
    again = make_executor(kind, tmp_path)
    assert again.state(job) == "done"


def test_a_failing_command_is_failed_with_its_output_in_the_log(kind, tmp_path):
    ex = make_executor(kind, tmp_path)
    argv = python("import sys, time; time.sleep(1); print('boom: no such dataset', file=sys.stderr); sys.exit(3)")
    job = ex.submit("bad", argv, log_dir=tmp_path / "logs")
    assert_in_order(watch(ex, job), "failed")
    assert (tmp_path / "logs" / "bad.log").read_text().splitlines()[1:] == ["boom: no such dataset"]


def test_cancel_mid_run_is_cancelled_and_the_command_is_stopped(kind, tmp_path):
    ex = make_executor(kind, tmp_path)
    started, stopped = tmp_path / "started", tmp_path / "stopped"
    # The command stops at a safe point on SIGTERM, as training does (it saves a checkpoint).
    argv = python(
        "import pathlib, signal, sys, time\n"
        f"def stop(*a): pathlib.Path({str(stopped)!r}).write_text('ok'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"pathlib.Path({str(started)!r}).write_text('ok')\n"
        "time.sleep(120)\n")
    job = ex.submit("long", argv, log_dir=tmp_path / "logs")
    seen = watch(ex, job, until=lambda s: started.exists() or s in FINAL)
    assert seen[-1] == "running", seen
    ex.cancel(job)
    seen = watch(ex, job)
    assert seen[-1] == "cancelled", seen
    assert stopped.read_text() == "ok"  # the signal reached the command, which stopped cleanly
    assert make_executor(kind, tmp_path).state(job) == "cancelled"


def test_states_once_jobs_left_the_queue_come_from_their_result_files(kind, tmp_path):
    """No sacct: once Slurm forgets a job (MinJobAge), submitit's result file in the job
    folder tells done, failed and cancelled apart - here with the remembered state removed."""
    ex = make_executor(kind, tmp_path)
    started = tmp_path / "started"
    jobs = {
        "done": ex.submit("ok", python("print('fine')"), log_dir=tmp_path / "logs"),
        "failed": ex.submit("bad", python("raise SystemExit(2)"), log_dir=tmp_path / "logs"),
        "cancelled": ex.submit("long", python(f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); "
                                              "time.sleep(120)"), log_dir=tmp_path / "logs"),
    }
    watch(ex, jobs["cancelled"], until=lambda s: started.exists() or s in FINAL)
    ex.cancel(jobs["cancelled"])
    for want, job in jobs.items():
        assert watch(ex, job)[-1] == want
    for want, job in jobs.items():
        if kind == "slurm":
            folder, raw = tmp_path / "jobs" / job, job
        else:
            pid, token = job.split("-")
            folder, raw = tmp_path / "jobs" / token, pid
        (folder / f"{raw}_vitmed_state").unlink(missing_ok=True)
        assert (folder / f"{raw}_0_result.pkl").is_file()
        assert state_from_files(folder, raw) == want


def test_a_cell_of_two_gpus_runs_two_torchrun_ranks(tmp_path):
    """gpus > 1: the command runs under torchrun, one rank per GPU, as DDP training expects
    (RANK/WORLD_SIZE/LOCAL_RANK); submitit hands the job the GPUs through CUDA_VISIBLE_DEVICES."""
    ex = SubmititLocalExecutor(tmp_path / "jobs", gpus=2)
    argv = python("import os, pathlib; e = os.environ; "
                  f"pathlib.Path({str(tmp_path)!r}, 'rank' + e['RANK']).write_text("
                  "e['WORLD_SIZE'] + ' ' + e['LOCAL_RANK'] + ' ' + e['CUDA_VISIBLE_DEVICES'])")
    job = ex.submit("ddp", argv, log_dir=tmp_path / "logs")
    assert watch(ex, job)[-1] == "done"
    assert (tmp_path / "rank0").read_text() == "2 0 0,1"
    assert (tmp_path / "rank1").read_text() == "2 1 0,1"


def test_slurm_options_reach_the_job(tmp_path):
    need_slurm()
    ex = SlurmExecutor(SlurmOptions(cpus=1, time_min=7, mem_gb=0.5, extra={"comment": "vitmed-cell"}), tmp_path)
    job = ex.submit("opts", python("import time; time.sleep(1)"), log_dir=tmp_path / "logs")
    shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, check=True).stdout
    fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
    assert (fields["JobName"], fields["TimeLimit"], fields["NumCPUs"]) == ("vitmed-opts", "00:07:00", "1")
    assert (fields["MinMemoryNode"], fields["Comment"]) == ("512M", "vitmed-cell")
    assert watch(ex, job)[-1] == "done"


def test_sbatch_refusing_a_job_is_one_line_naming_the_options(tmp_path):
    need_slurm()
    ex = SlurmExecutor(SlurmOptions(partition="no-such-partition"), tmp_path)
    with pytest.raises(ConfigError) as err:
        ex.submit("toy/seed0", python("pass"), log_dir=tmp_path)
    assert str(err.value) == (
        "sbatch refused the job of cell toy/seed0: Batch job submission failed: Invalid partition name specified"
        " - check `partition`, `account`, `gpus`, `cpus`, `mem_gb` and `time_min` against the cluster"
        " (sinfo lists its partitions)")


def test_no_slurm_on_path_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError) as err:
        SlurmExecutor(SlurmOptions(), tmp_path)
    assert str(err.value) == (
        "`executor` slurm needs Slurm's commands on PATH (missing: sbatch, srun, squeue, scancel) - run on a login"
        " node of a Slurm cluster, start a one-node cluster with .ci/start-slurm, or use `executor` local")


@pytest.mark.parametrize("options, message", [
    (SlurmOptions(gpus=-1), "`gpus` must be 0 or more GPUs per cell, got -1"),
    (SlurmOptions(cpus=0), "`cpus` must be at least 1 CPU per cell, got 0"),
    (SlurmOptions(mem_gb=0), "`mem_gb` must be more than 0 GB (or unset for the partition's default), got 0"),
    (SlurmOptions(time_min=0), "`time_min` must be at least 1 minute per cell, got 0"),
    (SlurmOptions(extra={"qos=x --wrap": "1"}),
     "`extra` sbatch parameter 'qos=x --wrap' is not an sbatch option name (e.g. qos, constraint)"),
])
def test_bad_slurm_options_are_refused_before_anything_is_submitted(options, message):
    with pytest.raises(ConfigError) as err:
        options.check()
    assert str(err.value) == message


def test_slurm_options_as_sbatch_parameters():
    opts = SlurmOptions(gpus=4, cpus=16, mem_gb=64, partition="gpu", time_min=720, account="lab",
                        extra={"qos": "high"})
    assert opts.sbatch_parameters() == {
        "time": 720, "cpus_per_task": 16, "ntasks_per_node": 1, "gpus_per_node": 4, "mem": "64GB",
        "partition": "gpu", "account": "lab", "additional_parameters": {"qos": "high"}}
    assert SlurmOptions(mem_gb=1.5).sbatch_parameters()["mem"] == "1536MB"


@pytest.mark.parametrize("text, minutes", [
    ("90", 90), ("1:30", 2), ("04:00:00", 240), ("1-12", 2160), ("1-00:30", 1470), ("2-01:00:01", 2941)])
def test_slurm_time_limits_in_minutes(text, minutes):
    assert parse_slurm_time(text) == minutes


@pytest.mark.parametrize("text", ["4h", "", "1:2:3:4"])
def test_a_time_limit_slurm_would_not_read_is_refused(text):
    with pytest.raises(ConfigError) as err:
        parse_slurm_time(text)
    assert str(err.value) == (f"`time` {text!r} is not a Slurm time limit - use minutes (90), HH:MM:SS (04:00:00)"
                              " or D-HH:MM:SS (1-12:00:00)")
    with pytest.raises(ConfigError, match=r"^`time` '00:00' must be at least one minute$"):
        parse_slurm_time("00:00")



def test_study_file_and_options_reach_the_slurm_executor(tmp_path, pg_registry_url, make_registry):
    """[executor.slurm] in the study file and study run's options, as the executor's options."""
    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm commands on PATH: install slurm-client (or start a cluster with .ci/start-slurm)")
    text = demo_study_text(DemoSettings.smallest(), name="tiny")
    spec = parse_study(text + '\n[executor.slurm]\ncpus = 4\nmem_gb = 16\ntime = "1-00:00:00"\n',
                       file=tmp_path / "s.toml", check_paths=False)
    assert (spec.slurm.cpus, spec.slurm.mem_gb, spec.slurm.time) == (4, 16.0, "1-00:00:00")
    with pytest.raises(ConfigError, match=r"^`executor\.slurm\.cpus` must be an integer, got 'four'"):
        parse_study(text + '\n[executor.slurm]\ncpus = "four"\n', file=tmp_path / "s.toml", check_paths=False)

    reg = make_registry(pg_registry_url)
    given = StudySlurmOptions(gpus=2, partition="gpu", time=spec.slurm.time, account="lab", cpus=spec.slurm.cpus,
                              mem_gb=spec.slurm.mem_gb)
    ex = create_executor("slurm", reg, slurm=given)
    assert ex.options == SlurmOptions(gpus=2, cpus=4, mem_gb=16.0, partition="gpu", time_min=1440, account="lab")
    assert ex.folder == reg.workspace.home / "slurm-jobs"
    assert create_executor("slurm", reg).options == SlurmOptions()  # nothing given: the executor's defaults



def test_a_study_cell_of_two_gpus_trains_once_under_torchrun(tmp_path, make_registry):
    """A fine-tuning cell and its prediction in a job of two "GPUs" (two torchrun ranks, gloo
    on the CPU): the ranks train one run together, and rank 0 alone records it, predicts and
    writes the cells' rows - one run, one evaluation."""
    f = _tiny_study(tmp_path, epochs=2)
    spec = load_study(f)
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    reg = make_registry(url)
    for key in ("ingest/demo-target", "split/demo-target"):
        run_cell(reg, spec, key)
    keys = ["finetune/demo-target/random/0", "predict/demo-target/random/0"]
    ex = SubmititLocalExecutor(tmp_path / "jobs", gpus=2)
    env = {**cell_env(url, reg.workspace.home), "CUDA_VISIBLE_DEVICES": ""}  # gloo: no GPU needed
    job = ex.submit(keys[0], cell_argv(f, keys), log_dir=tmp_path / "logs", env=env)
    log = tmp_path / "logs" / "finetune__demo-target__random__0.log"
    assert watch(ex, job)[-1] == "done", log.read_text()
    with reg.session() as s:
        runs = s.scalars(select(Run)).all()
        assert [(r.status, r.epochs_done, r.config_hash) for r in runs] == [
            ("completed", 2, spec_cell_hash(spec, keys[0]))]
        assert s.scalar(select(func.count()).select_from(Evaluation)) == 1
        cells = {c.key: c for c in s.scalars(select(StudyCell).where(StudyCell.key.in_(keys)))}
        assert {k: (c.state, c.run_id) for k, c in cells.items()} == {k: ("done", runs[0].id) for k in keys}
    assert log.read_text().count("epoch 2/2") == 1  # rank 0 alone reports progress


def spec_cell_hash(spec, key: str) -> str:
    return next(c.hash for c in build_plan(spec) if c.key == key)


def _queue_states(job_ids: list[str]) -> set[str]:
    if not job_ids:
        return set()
    out = subprocess.run(["squeue", "-h", "-o", "%T", "-j", ",".join(job_ids)], capture_output=True, text=True)
    return set(out.stdout.split())


def _tiny_study(tmp_path: Path, *, epochs: int) -> Path:
    s = dataclasses.replace(DemoSettings.smallest(), source_epochs=epochs, target_epochs=epochs, n_resamples=50)
    f = tmp_path / "tiny.toml"
    f.write_text(demo_study_text(s, seeds=[0], name="tiny", report_out=str(tmp_path / "out" / "report.md")))
    return f


@pytest.mark.slow
def test_demo_study_through_slurm_resumes_after_scancel_and_trains_nothing_twice(tmp_path, pg_registry_url):
    """The issue's check: the demo study through --executor slurm on PostgreSQL.  Each job asks
    for more than half of the node's CPUs, so one runs and the next waits in Slurm's queue (the
    other tests' one-CPU jobs fit beside it).  Mid-training one
    fine-tuning job is cancelled with scancel and the study run itself is killed, while the next
    fine-tuning's job is held in the queue; study run again completes the matrix - waiting for the
    job left in the queue rather than submitting its cell again, resuming the cancelled run - and a
    third finds everything done."""
    need_slurm()
    node_cpus = int(subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0]
                    .rstrip("+"))
    f, db = _tiny_study(tmp_path, epochs=6), pg_registry_url
    cmd = [sys.executable, "-m", "vitmed_cli", "--db", db, "study", "run", str(f), "--executor", "slurm",
           "--cpus", str(node_cpus // 2 + 1), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    reg = open_registry(db)
    try:
        cancelled = None
        while proc.poll() is None and cancelled is None:
            time.sleep(0.05)
            with reg.session() as s:
                run = s.scalar(select(Run).where(Run.resume_path.is_not(None), Run.status == "running",
                                                 Run.epochs_done < Run.epochs_planned))
                cell = run and s.scalar(select(StudyCell).where(StudyCell.config_hash == run.config_hash,
                                                                StudyCell.stage == "finetune"))
                others = [c.job_id for c in s.scalars(select(StudyCell).where(StudyCell.job_id.is_not(None),
                                                                              StudyCell.stage == "finetune"))
                          if cell is not None and c.job_id != cell.job_id]
                # cancel once another fine-tuning's job waits in the queue behind it (the node is
                # taken); that job is held, so it is still queued when the next study run looks
                waiting = [j for j in others if _queue_states([j]) == {"PENDING"}]
                if cell is not None and cell.job_id and waiting and subprocess.run(
                        ["scontrol", "hold", *waiting], capture_output=True).returncode == 0:
                    subprocess.run(["scancel", cell.job_id], check=True)
                    os.killpg(proc.pid, signal.SIGKILL)  # the controller; its Slurm jobs stay
                    cancelled = (run.id, cell.key, cell.job_id)
        proc.wait()
        assert cancelled is not None, "the study finished before a job could be cancelled"
        run_id, key, job = cancelled
        # Slurm's word for it, read without sacct, once the job has stopped its command
        assert watch(SlurmExecutor(SlurmOptions(), tmp_path / "jobs"), job)[-1] == "cancelled"

        again = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = []
        for line in again.stderr:  # the held job is waited for, not submitted again; then let go
            said.append(line)
            if "still in the queue - waiting for it" in line:
                subprocess.run(["scontrol", "release", *waiting], check=True)
                break
        out, err = again.communicate()
        assert again.returncode == 0, "".join(said) + err
        assert any("still in the queue - waiting for it" in line for line in said), said
        assert (json.loads(out)["n_done"], json.loads(out)["failed"]) == (12, {})
        third = subprocess.run(cmd, capture_output=True, text=True)
        assert (json.loads(third.stdout)["n_done"], json.loads(third.stdout)["executed"]) == (12, [])
        with reg.session() as s:
            hashes = s.execute(select(Run.config_hash, func.count()).group_by(Run.config_hash)).all()
            assert len(hashes) == 3 and {n for _, n in hashes} == {1}  # each fine-tuning trained once
            run = s.get(Run, run_id)
            assert (run.status, run.epochs_done, len(run.config["resumes"])) == ("completed", 6, 1)
            cells = {c.key: c for c in s.scalars(select(StudyCell))}
            assert {c.state for c in cells.values()} == {"done"}
            assert cells[key].job_id != job  # a new job resumed the cancelled run
            # Submitted twice: the cancelled cell and the prediction chained to it in its job;
            # the job the killed run left in the queue was waited for, not submitted again.
            twice = {key, "predict/" + key.split("/", 1)[1]} & set(cells)
            attempts = {k: c.attempts for k, c in cells.items()}
            assert attempts == {k: 2 if k in twice else 1 for k in cells}, attempts
    finally:
        reg.dispose()


def test_study_status_reads_the_cells_slurm_jobs(tmp_path, pg_registry_url, make_registry):
    """study status asks Slurm about a cell's job: held in the queue, the cell is running (job
    state pending); cancelled, the cell is pending again for the next study run, the job named."""
    need_slurm()
    from typer.testing import CliRunner

    from vitmed_cli.cli import app
    from vitmed_cli.study import sync_study

    f = _tiny_study(tmp_path, epochs=1)
    reg = make_registry(pg_registry_url)
    sync_study(reg, load_study(f))
    held = subprocess.run(["sbatch", "--parsable", "--hold", "-o", "/dev/null", "--wrap", "sleep 30"],
                          capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    (reg.workspace.home / "slurm-jobs" / held).mkdir(parents=True)  # the job's folder, as submitit makes it
    key = "finetune/demo-target/random/0"
    try:
        with reg.session() as s:
            s.scalar(select(StudyCell).where(StudyCell.key == key)).job_id = held
            # a local study run's process id is no Slurm job of this study: not asked about
            s.scalar(select(StudyCell).where(StudyCell.key == "ingest/demo-target")).job_id = str(os.getpid())

        def status() -> dict:
            res = CliRunner().invoke(app, ["--db", pg_registry_url, "study", "status", str(f), "--json"])
            assert res.exit_code == 0, res.output
            return {c["key"]: c for c in json.loads(res.stdout)["cells"]}

        cells = status()
        assert (cells[key]["state"], cells[key]["job_id"], cells[key]["job_state"]) == ("running", held, "pending")
        assert cells["predict/demo-target/random/0"]["job_state"] is None  # no job: the registry alone
        assert (cells["ingest/demo-target"]["state"], cells["ingest/demo-target"]["job_state"]) == ("pending", None)
        subprocess.run(["scancel", held], check=True)
        cells = status()
        assert (cells[key]["state"], cells[key]["job_state"]) == ("pending", "cancelled")
        assert cells[key]["error"] == f"job {held} cancelled - study run resumes the cell"
    finally:
        subprocess.run(["scancel", held], capture_output=True)
