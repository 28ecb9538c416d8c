"""Multi-process training: torchrun with 2 CPU processes (gloo) records one run, once."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch.distributed as dist
from sqlalchemy import func, select

from helpers import build_dataset
from vitmed_cli.registry.models import Checkpoint, EpochMetric, Run

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="this PyTorch build has no gloo backend for CPU process groups")
def test_torchrun_two_gloo_processes_record_the_run_once(registry, tmp_path):
    build_dataset(registry, tmp_path, n=120)
    url = registry.engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "vitmed_cli", "--db", url, "finetune", "--dataset", "toy", "--device", "cpu",
        "--arch", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(TINY), "--epochs", "2",
        "--batch-size", "16", "--lr", "1e-3", "--num-workers", "0", "--quiet", "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # only rank 0 prints: exactly one JSON document
    assert out["status"] == "completed" and out["epochs_done"] == 2
    with registry.session() as s:
        runs = s.scalars(select(Run)).all()
        assert len(runs) == 1
        run = runs[0]
        assert run.id == out["run_id"] and run.world_size == 2 and run.status == "completed"
        assert s.scalar(select(func.count()).where(EpochMetric.run_id == run.id)) == 2
        roles = sorted(s.scalars(select(Checkpoint.role).where(Checkpoint.run_id == run.id)))
        assert roles == ["best", "last"]
        # each rank trained on half of every epoch
        assert run.config["n_batches_per_epoch"] == math.ceil(math.ceil(run.config["n_train"] / 2) / 16)
