"""predict scores with exactly the checkpoint the registry names, or refuses."""

from __future__ import annotations

import json
import shutil

from sqlalchemy import func, select
from typer.testing import CliRunner

from helpers import build_dataset
from vitmed_cli.cli import app
from vitmed_cli.registry.models import Checkpoint, Evaluation
from vitmed_cli.weights import sha256_file

runner = CliRunner()
TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


def _train(url: str, seed: int) -> int:
    res = runner.invoke(app, ["--db", url, "finetune", "--dataset", "toy", "--epochs", "1", "--seed", str(seed),
                              "--arch", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(TINY),
                              "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["run_id"]


def _best(registry, run_id: int):
    with registry.session() as s:
        ck = s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.role == "best")).one()
        return ck.path, ck.sha256


def _n_evals(registry) -> int:
    with registry.session() as s:
        return s.scalar(select(func.count()).select_from(Evaluation))


def test_a_swapped_or_damaged_checkpoint_is_refused_and_nothing_is_stored(registry, tmp_path):
    build_dataset(registry, tmp_path, n=80)
    url = registry.engine.url.render_as_string(hide_password=False)
    a, b = _train(url, 0), _train(url, 1)
    path_a, sha_a = _best(registry, a)
    path_b, _ = _best(registry, b)
    original = tmp_path / "a.safetensors"
    shutil.copy(path_a, original)

    shutil.copy(path_b, path_a)  # another run's valid file copied over run a's
    res = runner.invoke(app, ["--db", url, "predict", "--run", str(a)])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        f"Error: the best checkpoint of run {a} ({path_a}) changed since it was registered (sha256 "
        f"{sha256_file(path_b)[:12]}..., registered {sha_a[:12]}...) - restore the original file, or "
        "register the new one (vitmed pretrain-load)"
    ]
    with open(path_a, "r+b") as fh:  # damaged: a truncated file
        fh.truncate(100)
    res = runner.invoke(app, ["--db", url, "predict", "--run", str(a)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.startswith(f"Error: the best checkpoint of run {a} ({path_a}) changed since it was registered")
    assert _n_evals(registry) == 0

    shutil.copy(original, path_a)  # restored: it scores, and records the hash of the file it used
    res = runner.invoke(app, ["--db", url, "predict", "--run", str(a), "--json"])
    assert res.exit_code == 0, res.output
    with registry.session() as s:
        ev = s.get(Evaluation, json.loads(res.stdout)["evaluation_id"])
        assert ev.config["checkpoint_sha256"] == sha_a == sha256_file(path_a)
