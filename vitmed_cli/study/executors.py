"""Where cells run: the protocol every executor implements, and the local one.

An executor starts one cell's command line as a job and reports the job's state; it never
decides whether a cell is done - the registry does (:mod:`.cells`).  ``local`` runs
processes on this machine, one per free GPU (one at a time on the CPU); ``slurm``
(:mod:`vitmed_cli.study.slurm`) submits Slurm jobs through submitit.

The local executor forks a cell's ``python -m vitmed_cli ...`` from a server process that has
imported torch and timm once (multiprocessing's forkserver, where the platform has one), so a
cell does not spend its first five seconds of CPU importing them again; a cell is still its own
process, with its own log, environment, GPU and exit status, killed and cancelled as one.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

JOB_STATES = ("pending", "running", "done", "failed", "cancelled", "unknown")


class Executor(Protocol):
    name: str

    def submit(self, key: str, argv: list[str], *, log_dir: Path, env: dict[str, str] | None = None) -> str: ...  # job id

    def state(self, job_id: str) -> str: ...   # "pending" | "running" | "done" | "failed" | "cancelled" | "unknown"

    def cancel(self, job_id: str) -> None: ...


@dataclass(frozen=True)
class SlurmOptions:
    """What a Slurm job asks for (options of study run, or [executor.slurm] in the study file);
    ``vitmed_cli.study.slurm.SlurmExecutor(options)`` takes it."""

    gpus: int | None = None
    partition: str | None = None
    time: str | None = None  # Slurm's time limit, e.g. 04:00:00
    account: str | None = None
    cpus: int | None = None
    mem_gb: float | None = None


def cell_argv(study_file: str | Path, keys: list[str]) -> list[str]:
    """The command line that runs ``keys`` (in order) of a study: what every executor starts.

    The registry and workspace travel in the environment (:func:`cell_env`), so a password in
    the registry URL never shows in a process list."""
    return [sys.executable, "-m", "vitmed_cli", "study", "cell", str(study_file), *keys]


def cell_env(db_url: str, home: str | Path) -> dict[str, str]:
    """The environment a cell's job needs on top of its own: the registry URL and the workspace."""
    return {"VITMED_DB_URL": db_url, "VITMED_HOME": str(home)}


def _log_name(key: str) -> str:
    return key.replace("/", "__") + ".log"


def visible_gpus() -> list[str]:
    """GPU ids a local job may take: CUDA_VISIBLE_DEVICES, or every device torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # pragma: no cover - no torch CUDA at all
        return []


PRELOAD = ("torch", "timm")  # what every fine-tuning and prediction cell imports first


def _python_module(argv: list[str]) -> str | None:
    """MODULE of a ``python -m MODULE ...`` command line of this interpreter, else None."""
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m":
        return argv[2]
    return None


def _run_module(module: str, args: list[str], log_path: str, env: dict[str, str]) -> None:
    """A forked job: output to its log, its own environment, then ``python -m module args``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _forkserver():
    """multiprocessing's forkserver context with torch and timm imported, or None (no forkserver)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None  # pragma: no cover - Windows
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


class _Forked:
    """A forked job with the part of subprocess.Popen's interface the executor uses."""

    def __init__(self, process) -> None:
        self.process = process
        self.pid = process.pid

    def poll(self) -> int | None:
        return self.process.exitcode

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
        return self.process.exitcode


class LocalExecutor:
    """Processes on this machine: one per free GPU, or one at a time on the CPU.

    ``python -m`` command lines of this interpreter are forked from a server that has torch and
    timm imported (``preload=False``, or a platform without forkserver: every job a subprocess)."""

    name = "local"

    def __init__(self, gpus: list[str] | None = None, *, preload: bool = True) -> None:
        self.gpus = visible_gpus() if gpus is None else list(gpus)
        self.slots = max(1, len(self.gpus))
        self._procs: dict[str, subprocess.Popen | _Forked] = {}
        self._gpu_of: dict[str, str] = {}
        self._logs: dict[str, object] = {}
        self._ctx = _forkserver() if preload else None

    def free_slots(self) -> int:
        return self.slots - sum(1 for p in self._procs.values() if p.poll() is None)

    def submit(self, key: str, argv: list[str], *, log_dir: Path, env: dict[str, str] | None = None) -> str:
        log_dir.mkdir(parents=True, exist_ok=True)
        job_env = {**os.environ, **(env or {})}
        busy = {g for j, g in self._gpu_of.items() if self._procs[j].poll() is None}
        free = [g for g in self.gpus if g not in busy]
        if self.gpus:
            job_env["CUDA_VISIBLE_DEVICES"] = free[0] if free else self.gpus[0]
        log_path = log_dir / _log_name(key)
        module = _python_module(argv)
        if self._ctx is not None and module is not None:
            process = self._ctx.Process(target=_run_module, args=(module, argv[3:], str(log_path), job_env),
                                        name=f"vitmed {key}")
            process.start()
            proc: subprocess.Popen | _Forked = _Forked(process)
        else:
            log = open(log_path, "ab")
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=job_env,
                                    stdin=subprocess.DEVNULL)
            self._logs[str(proc.pid)] = log
        job = str(proc.pid)
        self._procs[job] = proc
        if self.gpus:
            self._gpu_of[job] = job_env["CUDA_VISIBLE_DEVICES"]
        return job

    def state(self, job_id: str) -> str:
        proc = self._procs.get(job_id)
        if proc is None:
            return "unknown"
        code = proc.poll()
        if code is None:
            return "running"
        log = self._logs.pop(job_id, None)
        if log is not None:
            log.close()
        if code == 0:
            return "done"
        return "cancelled" if code < 0 else "failed"

    def cancel(self, job_id: str) -> None:
        proc = self._procs.get(job_id)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - a job that ignores SIGTERM
                proc.kill()


__all__ = ["Executor", "JOB_STATES", "LocalExecutor", "SlurmOptions", "cell_argv", "cell_env", "visible_gpus"]
