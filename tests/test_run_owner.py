"""A killed run shows as stale and can be resumed; a run still training cannot be resumed twice."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from helpers import build_dataset
from vitmed_cli.cli import app
from vitmed_cli.registry import owner
from vitmed_cli.registry.models import EpochMetric, Run

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
runner = CliRunner()


def _url(registry) -> str:
    return registry.engine.url.render_as_string(hide_password=False)


def _start_training(registry, tmp_path, epochs: int) -> subprocess.Popen:
    """``vitmed finetune`` in a child process (so that it can be killed like a real one)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VITMED_HOME": os.environ["VITMED_HOME"]}
    cmd = [sys.executable, "-m", "vitmed_cli", "--db", _url(registry), "finetune", "--dataset", "toy",
           "--device", "cpu", "--arch", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(TINY),
           "--epochs", str(epochs), "--batch-size", "8", "--lr", "1e-3", "--num-workers", "0", "--quiet"]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_epoch(registry, proc: subprocess.Popen, epoch: int, timeout: float = 120.0) -> int:
    """The child's run id once it recorded ``epoch`` epochs (so resume.pt exists)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        with registry.session() as s:
            run = s.scalars(select(Run)).first()
            if run is not None and s.scalars(select(EpochMetric).where(EpochMetric.run_id == run.id,
                                                                       EpochMetric.epoch >= epoch)).first():
                return run.id
        time.sleep(0.2)
    raise AssertionError("the child never finished its first epoch")


def test_resume_of_a_live_run_is_refused_and_a_killed_run_shows_stale(registry, tmp_path):
    build_dataset(registry, tmp_path, n=160)
    proc = _start_training(registry, tmp_path, epochs=500)
    try:
        run_id = _wait_for_epoch(registry, proc, 1)
        with registry.session() as s:
            run = s.get(Run, run_id)
            assert (run.owner_host, run.owner_pid) == (owner.socket.gethostname(), proc.pid)
            assert run.heartbeat_at is not None
        listed = json.loads(runner.invoke(app, ["--db", _url(registry), "runs", "list", "--json"]).stdout)
        assert [r["status"] for r in listed] == ["running"]
        res = runner.invoke(app, ["--db", _url(registry), "finetune", "--resume", str(run_id)])
        assert res.exit_code == 1
        assert res.stderr.startswith(
            f"Error: run {run_id} is still being trained by process {proc.pid} on "
            f"{owner.socket.gethostname()} (last heartbeat "
        ), res.stderr
        assert f"- wait for it to end, or stop it (kill {proc.pid}) and resume then" in res.stderr
    finally:
        proc.send_signal(signal.SIGKILL)  # no handler runs: the row stays 'running'
        proc.wait()
    with registry.session() as s:
        run = s.get(Run, run_id)
        assert run.status == "running"
        target = run.epochs_done + 1
    listed = json.loads(runner.invoke(app, ["--db", _url(registry), "runs", "list", "--json"]).stdout)
    assert [r["status"] for r in listed] == ["interrupted (stale)"]
    stale = json.loads(runner.invoke(app, ["--db", _url(registry), "runs", "list", "--status", "stale",
                                           "--json"]).stdout)
    assert [r["id"] for r in stale] == [run_id]
    # the owner is gone: resuming is allowed and finishes the run
    res = runner.invoke(app, ["--db", _url(registry), "finetune", "--resume", str(run_id), "--epochs", str(target),
                              "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"] == "completed"
    with registry.session() as s:
        run = s.get(Run, run_id)
        assert run.status == "completed" and run.owner_pid == os.getpid()


def test_owner_on_another_host_is_judged_by_its_heartbeat():
    now = dt.datetime.now(dt.timezone.utc)
    fresh = now - dt.timedelta(seconds=owner.HEARTBEAT_SECONDS)
    old = now - dt.timedelta(seconds=owner.STALE_AFTER_SECONDS + 1)
    assert owner.owner_state("gpu-node-7", 4242, "x:1", fresh, now) == "alive"
    assert owner.owner_state("gpu-node-7", 4242, "x:1", old, now) == "gone"
    assert owner.owner_state("gpu-node-7", 4242, "x:1", None, now) == "gone"
    assert owner.owner_state(None, None, None, fresh, now) == "gone"  # no owner recorded


def test_a_reused_pid_on_this_host_is_not_the_owner():
    me = owner.current_owner()
    assert owner.owner_state(me.host, me.pid, me.token, None) == "alive"
    if me.token is None:
        pytest.skip("no /proc here to tell a reused pid apart (Linux only)")
    assert owner.owner_state(me.host, me.pid, "other-boot:1", None) == "gone"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    assert owner.owner_state(me.host, int(dead.stdout), None, None) == "gone"
