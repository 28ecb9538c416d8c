"""The local executor: a ``python -m`` cell forked from a server with torch and timm imported,
every other command line a subprocess; each job its own process, log, environment and exit."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from vitmed_cli.study.executors import LocalExecutor

# a subprocess finds tests/forked_job.py through PYTHONPATH; a forked job, on the path it was forked with
TESTS = {"PYTHONPATH": str(Path(__file__).parent)}


def _wait(ex: LocalExecutor, job: str) -> str:
    while (state := ex.state(job)) == "running":
        time.sleep(0.05)
    return state


def _seen(log) -> dict:
    return json.loads(log.read_text().splitlines()[0])


@pytest.mark.parametrize("preload", [True, False])
def test_a_job_gets_its_log_environment_gpu_and_exit_status(tmp_path, preload):
    ex = LocalExecutor(gpus=["3"], preload=preload)
    argv = [sys.executable, "-m", "forked_job", "finetune/x", "predict/x"]
    job = ex.submit("finetune/x", argv, log_dir=tmp_path / "logs", env={**TESTS, "VITMED_PROBE": "hello"})
    assert _wait(ex, job) == "done"
    seen = _seen(tmp_path / "logs" / "finetune__x.log")
    assert seen == {"argv": ["finetune/x", "predict/x"], "torch_loaded": preload, "probe": "hello", "gpu": "3",
                    "pid": int(job)}

    job = ex.submit("failing/x", argv, log_dir=tmp_path / "logs", env={**TESTS, "VITMED_PROBE_EXIT": "3"})
    assert _wait(ex, job) == "failed"
    assert _seen(tmp_path / "logs" / "failing__x.log")["pid"] == int(job)


@pytest.mark.parametrize("preload", [True, False])
def test_a_cancelled_job_is_cancelled(tmp_path, preload):
    ex = LocalExecutor(gpus=[], preload=preload)
    job = ex.submit("slow/x", [sys.executable, "-m", "forked_job"], log_dir=tmp_path,
                    env={**TESTS, "VITMED_PROBE_SLEEP": "60"})
    log = tmp_path / "slow__x.log"
    while not (log.exists() and log.read_text()):  # it started
        time.sleep(0.05)
    ex.cancel(job)
    assert ex.state(job) == "cancelled"


def test_other_command_lines_run_as_subprocesses(tmp_path):
    ex = LocalExecutor(gpus=[])
    code = "import sys; print('torch' in sys.modules); sys.exit(2)"
    job = ex.submit("c/x", [sys.executable, "-c", code], log_dir=tmp_path)
    assert _wait(ex, job) == "failed"
    assert (tmp_path / "c__x.log").read_text().strip() == "False"
