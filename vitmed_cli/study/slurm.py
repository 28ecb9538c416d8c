"""Study cells as jobs through submitit: on a Slurm cluster, or as subprocesses on this machine.

Each cell is one command line (``vitmed ... study cell FILE KEY``).  submitit (the engine
DINOv2 launches its Slurm jobs with) pickles a small callable, :class:`CellCommand`, that runs
it inside the job with its output in the cell's log file; a cell of several GPUs runs its
command under ``torchrun --standalone``, one process per GPU, the path vitmed's training
already takes for DDP.

Job states are read without ``sacct`` (clusters without accounting, ``slurmdbd``, have none):
``squeue`` while Slurm still holds the job, then the job's folder - the state last seen in
the queue, or submitit's result file (success, an error, or the command stopped by a signal).
Whether a cell's work is done is the registry's answer, not the executor's.
"""

from __future__ import annotations

import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from ..errors import ConfigError, NotFound

STATES = ("pending", "running", "done", "failed", "cancelled", "unknown")
_FINAL = {"done", "failed", "cancelled"}

# Slurm's job states (squeue %T) in the executor protocol's words.
SLURM_STATES = {
    "PENDING": "pending",
    "CONFIGURING": "pending",
    "REQUEUED": "pending",
    "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending",
    "RESV_DEL_HOLD": "pending",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "SUSPENDED": "running",
    "STOPPED": "running",
    "RESIZING": "running",
    "COMPLETED": "done",
    "FAILED": "failed",
    "TIMEOUT": "failed",
    "NODE_FAIL": "failed",
    "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
    "SPECIAL_EXIT": "failed",
    "CANCELLED": "cancelled",
    "PREEMPTED": "cancelled",
    "REVOKED": "cancelled",
}

_LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local controller kills a job after its timeout


@dataclass
class SlurmOptions:
    """What each cell's Slurm job asks for."""

    gpus: int = 0
    cpus: int = 2
    mem_gb: float | None = None
    partition: str | None = None
    time_min: int = 60
    account: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        if self.gpus < 0:
            raise ConfigError(f"`gpus` must be 0 or more GPUs per cell, got {self.gpus}")
        if self.cpus < 1:
            raise ConfigError(f"`cpus` must be at least 1 CPU per cell, got {self.cpus}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ConfigError(f"`mem_gb` must be more than 0 GB (or unset for the partition's default), "
                              f"got {self.mem_gb}")
        if self.time_min < 1:
            raise ConfigError(f"`time_min` must be at least 1 minute per cell, got {self.time_min}")
        for key, value in self.extra.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", str(key)):
                raise ConfigError(f"`extra` sbatch parameter {key!r} is not an sbatch option name "
                                  "(e.g. qos, constraint)")
            if not isinstance(value, str):
                raise ConfigError(f"`extra` sbatch parameter {key} must be a string, got {value!r}")

    def sbatch_parameters(self) -> dict[str, Any]:
        """These options as submitit's Slurm parameters (one task per job; torchrun starts the ranks)."""
        self.check()
        params: dict[str, Any] = {"time": int(self.time_min), "cpus_per_task": int(self.cpus), "ntasks_per_node": 1}
        if self.gpus:
            params["gpus_per_node"] = int(self.gpus)
        if self.mem_gb is not None:
            mem = float(self.mem_gb)
            params["mem"] = f"{int(mem)}GB" if mem == int(mem) else f"{int(mem * 1024)}MB"
        if self.partition:
            params["partition"] = self.partition
        if self.account:
            params["account"] = self.account
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        return params


def parse_slurm_time(text: str) -> int:
    """A Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``)
    in whole minutes, seconds rounded up, as ``time_min`` takes it."""
    raw = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", raw)
    if m is None:
        raise ConfigError(f"`time` {raw!r} is not a Slurm time limit - use minutes (90), HH:MM:SS (04:00:00) "
                          "or D-HH:MM:SS (1-12:00:00)")
    days, a, b, c = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + a * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = a * 60 + int(b)
    else:  # MM
        seconds = a * 60
    minutes = -(-seconds // 60)
    if minutes < 1:
        raise ConfigError(f"`time` {raw!r} must be at least one minute")
    return minutes


class CellCommandFailed(RuntimeError):
    """The cell's command exited with a non-zero status."""


class CellCommandStopped(RuntimeError):
    """The cell's command was stopped by a signal: a cancel, a pre-emption or a time limit."""


class CellCommand:
    """One cell's command line, run inside a submitit job; its output is appended to ``log_path``.

    A SIGTERM or SIGINT reaching the job (``scancel``, a pre-emption, a local cancel) is passed
    on to the command, which stops at a safe point (training saves a checkpoint), and the job
    then ends as stopped rather than failed.  ``unset`` names variables removed from the
    command's environment, ``env`` is laid over it.
    """

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 unset: tuple[str, ...] = ()) -> None:
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.unset = tuple(unset)

    def __call__(self) -> int:
        env = {k: v for k, v in os.environ.items() if k not in self.unset}
        env.update(self.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        stopped_by: list[int] = []
        with open(self.log_path, "ab") as log:
            job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", "?")
            log.write(f"== job {job} on {os.uname().nodename} at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: "
                      f"{_without_passwords(shlex.join(self.argv))}\n".encode())
            log.flush()
            proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)

            def forward(signum: int, frame: Any) -> None:
                stopped_by.append(signum)
                if proc.poll() is None:
                    proc.send_signal(signum)

            previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                code = proc.wait()
            except BaseException:
                # submitit's time-limit handler raises here: let the command stop cleanly first.
                _stop(proc)
                raise
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
        if stopped_by or code < 0:
            sig = signal.Signals(stopped_by[0] if stopped_by else -code).name
            raise CellCommandStopped(f"stopped by {sig} (exit status {code}); its output is in {self.log_path}")
        if code:
            raise CellCommandFailed(f"exited with status {code}; its output is in {self.log_path}")
        return code


def _stop(proc: subprocess.Popen, grace_s: float = 60.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cell_argv(argv: list[str], gpus: int) -> list[str]:
    """``argv`` as one job runs it: under torchrun with one process per GPU when ``gpus`` > 1."""
    argv = [str(a) for a in argv]
    if gpus <= 1:
        return argv
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus),
            "--no-python", *argv]


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key.replace("/", "__")).strip("_") or "cell"


def _without_passwords(text: str) -> str:
    """Database URLs in a command line with their passwords starred (logs are not secret)."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def _paths(folder: Path, job_id: str) -> dict[str, Path]:
    p = submitit.core.utils.JobPaths(folder, job_id=job_id)
    return {"result": p.result_pickle, "submitted": p.submitted_pickle,
            "state": p.folder / f"{job_id}_vitmed_state"}


def _remember(folder: Path, job_id: str, state: str) -> None:
    path = _paths(folder, job_id)["state"]
    if path.parent.is_dir():
        path.write_text(state + "\n")


def state_from_files(folder: Path, job_id: str) -> str:
    """The state of a job that is no longer in the queue, from its submitit folder.

    The state last seen in the queue (or a cancel) wins; else submitit's result: success ->
    done, the command stopped by a signal -> cancelled, any other error -> failed.  A job
    that left without a result never ran to its end (cancelled while pending, or killed):
    cancelled.  Nothing in the folder: unknown.
    """
    paths = _paths(folder, job_id)
    if paths["state"].is_file():
        seen = paths["state"].read_text().strip()
        if seen in STATES:
            return seen
    if paths["result"].is_file():
        try:
            with open(paths["result"], "rb") as f:
                outcome, detail = pickle.load(f)
        except Exception:  # a result file being written or torn: no verdict yet
            return "unknown"
        if outcome == "success":
            return "done"
        return "cancelled" if CellCommandStopped.__name__ in str(detail) else "failed"
    if paths["submitted"].is_file():
        return "cancelled"
    return "unknown"


def _squeue_answered(proc: subprocess.CompletedProcess) -> bool:
    """squeue ran and answered (an id it no longer knows is an answer too)."""
    return proc.returncode == 0 or "invalid job id" in proc.stderr.lower()


def _left_queue_state(job_folder: Path, job_id: str, answered: bool) -> str:
    """A job squeue did not list: its state from its folder, or unknown where squeue did not
    answer and the folder cannot tell a cancelled job from one still queued."""
    state = state_from_files(job_folder, job_id)
    if state == "cancelled" and not answered and not _paths(job_folder, job_id)["state"].is_file():
        return "unknown"
    return state


def _private_folder(folder: str | Path) -> Path:
    """The jobs' folder, readable by this user alone: a job's pickle holds its environment,
    the registry URL with its password among it."""
    path = Path(folder).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    """``cmd``'s outcome; a Slurm command that is missing or hangs reads as a failed call."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 255, "", f"{cmd[0]} did not answer: {e}")


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors[-1] if errors else lines[-1] if lines else "no output").removeprefix("sbatch: error: ")


class SlurmExecutor:
    """Each cell one Slurm job, submitted by submitit; states from squeue and the job folder.

    ``folder`` holds submitit's files, one sub-folder per job id; on a cluster it must be
    on a file system the compute nodes share (as the registry must be PostgreSQL).
    """

    name = "slurm"

    def __init__(self, options: SlurmOptions | None = None, folder: str | Path = "slurm-jobs") -> None:
        self.options = options or SlurmOptions()
        self.options.check()
        missing = [tool for tool in ("sbatch", "srun", "squeue", "scancel") if shutil.which(tool) is None]
        if missing:
            raise ConfigError(
                f"`executor` slurm needs Slurm's commands on PATH (missing: {', '.join(missing)}) - "
                "run on a login node of a Slurm cluster, start a one-node cluster with .ci/start-slurm, "
                "or use `executor` local")
        self.folder = _private_folder(folder)
        self._job_folder = self.folder / "%j"
        self._submitit = submitit.SlurmExecutor(folder=self._job_folder)

    def submit(self, key: str, argv: list[str], *, log_dir: Path, env: dict[str, str] | None = None) -> str:
        params = self.options.sbatch_parameters()
        self._submitit.update_parameters(job_name=f"vitmed-{_safe_name(key)}"[:100], **params)
        command = CellCommand(cell_argv(argv, self.options.gpus), Path(log_dir) / f"{_safe_name(key)}.log", env)
        try:
            job = self._submitit.submit(command)
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as e:
            raise ConfigError(
                f"sbatch refused the job of cell {key}: {_one_line(str(e))} - check `partition`, `account`, "
                "`gpus`, `cpus`, `mem_gb` and `time_min` against the cluster (sinfo lists its partitions)") from None
        return str(job.job_id)

    def state(self, job_id: str) -> str:
        job_id = str(job_id)
        if not re.fullmatch(r"\d+(_\d+)?", job_id):
            return "unknown"
        proc = _run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"])
        if proc.returncode == 0 and proc.stdout.strip():
            raw = proc.stdout.split()[0].upper()
            state = SLURM_STATES.get(raw, "unknown")
            if state in _FINAL:
                _remember(self._job_folder, job_id, state)
            return state
        return _left_queue_state(self._job_folder, job_id, _squeue_answered(proc))

    def cancel(self, job_id: str) -> None:
        job_id = str(job_id)
        if not re.fullmatch(r"\d+(_\d+)?", job_id):
            raise NotFound(f"`job_id` {job_id!r} is not a Slurm job id (digits, as squeue shows them)")
        proc = _run(["scancel", job_id])
        if proc.returncode != 0:
            raise ConfigError(f"scancel could not cancel job {job_id}: {_one_line(proc.stderr)}")
        if self.state(job_id) not in _FINAL:
            _remember(self._job_folder, job_id, "cancelled")


class SlurmJobStates:
    """The states of a study's Slurm jobs, as ``study status`` reads them: one ``squeue`` call for
    all of them, then the job folders for those Slurm has forgotten.  Only ids with a job folder
    under ``folder`` are asked about (an id from another executor - a local process id - is not a
    Slurm job of this study), and nothing is written: no folder made or chmod-ed, no state
    remembered, so it works on a workspace the user can only read."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._job_folder = self.folder / "%j"

    def states(self, job_ids: list[str]) -> dict[str, str]:
        ours = [j for j in dict.fromkeys(map(str, job_ids))
                if re.fullmatch(r"\d+(_\d+)?", j) and (self.folder / j).is_dir()]
        if not ours:
            return {}
        proc = _run(["squeue", "-h", "-t", "all", "-j", ",".join(ours), "-o", "%i %T"])
        queued: dict[str, str] = {}
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                parts = line.split()
                if len(parts) == 2:
                    queued[parts[0]] = SLURM_STATES.get(parts[1].upper(), "unknown")
        answered = _squeue_answered(proc)
        return {j: queued[j] if j in queued else _left_queue_state(self._job_folder, j, answered) for j in ours}


class SubmititLocalExecutor:
    """The same jobs as :class:`SlurmExecutor` through submitit's LocalExecutor: real
    subprocesses on this machine, for machines without Slurm.  Job ids read ``PID-TOKEN``;
    each job has its own sub-folder ``TOKEN`` of ``folder``.

    ``gpus`` > 0 gives each job that many GPUs (submitit sets ``CUDA_VISIBLE_DEVICES``; more
    than one runs under torchrun); 0 leaves the command the GPUs this process sees.
    """

    name = "submitit-local"

    def __init__(self, folder: str | Path = "local-jobs", gpus: int = 0) -> None:
        if gpus < 0:
            raise ConfigError(f"`gpus` must be 0 or more GPUs per cell, got {gpus}")
        self.folder = _private_folder(folder)
        self.gpus = gpus
        self._procs: dict[str, subprocess.Popen] = {}

    def submit(self, key: str, argv: list[str], *, log_dir: Path, env: dict[str, str] | None = None) -> str:
        token = uuid.uuid4().hex[:12]
        ex = submitit.LocalExecutor(folder=self.folder / token)
        ex.update_parameters(timeout_min=_LOCAL_TIMEOUT_MIN, gpus_per_node=self.gpus)
        env = dict(env or {})
        unset: tuple[str, ...] = ()
        if not self.gpus and "CUDA_VISIBLE_DEVICES" not in env:
            # submitit hides every GPU from a job that asked for none; keep this process's view.
            if "CUDA_VISIBLE_DEVICES" in os.environ:
                env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
            else:
                unset = ("CUDA_VISIBLE_DEVICES",)
        command = CellCommand(cell_argv(argv, self.gpus), Path(log_dir) / f"{_safe_name(key)}.log", env, unset)
        job = ex.submit(command)
        job_id = f"{job.job_id}-{token}"
        if job._process is not None:
            self._procs[job_id] = job._process
        return job_id

    def _parse(self, job_id: str) -> tuple[int, Path] | None:
        m = re.fullmatch(r"(\d+)-([0-9a-f]{12})", str(job_id))
        return (int(m.group(1)), self.folder / m.group(2)) if m else None

    def _alive(self, job_id: str, pid: int, folder: Path) -> bool:
        proc = self._procs.get(job_id)
        if proc is not None:
            return proc.poll() is None
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists():  # a reused pid runs something else
            return str(folder).encode() in cmdline.read_bytes()
        return True

    def state(self, job_id: str) -> str:
        parsed = self._parse(job_id)
        if parsed is None:
            return "unknown"
        pid, folder = parsed
        if self._alive(job_id, pid, folder):
            return "running"
        return state_from_files(folder, str(pid))

    def cancel(self, job_id: str) -> None:
        parsed = self._parse(job_id)
        if parsed is None:
            raise NotFound(f"`job_id` {job_id!r} is not a local job id of this executor (PID-TOKEN)")
        pid, folder = parsed
        if not self._alive(job_id, pid, folder):
            return
        _remember(folder, str(pid), "cancelled")
        # SIGTERM, as scancel sends: submitit's controller passes it to the job, which passes
        # it to the command, which stops at a safe point.
        os.kill(pid, signal.SIGTERM)
