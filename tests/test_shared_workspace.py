"""Two registries sharing one workspace folder (VITMED_HOME): each keeps its own cache files and
run folders, though both have a dataset 1 of the same name and a run 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from safetensors.torch import load_file
from sqlalchemy import select
from typer.testing import CliRunner

from helpers import build_dataset
from vitmed_cli.cli import app
from vitmed_cli.registry.models import Checkpoint, Image
from vitmed_cli.training import finetune
from vitmed_cli.weights import sha256_file

runner = CliRunner()
TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


def _csv(folder: Path, value: int) -> Path:
    (folder / "img").mkdir(parents=True)
    for i in range(3):
        PILImage.fromarray(np.full((20, 20), value + i, dtype=np.uint8)).save(folder / "img" / f"{i}.png")
    (folder / "labels.csv").write_text("path,Cardiomegaly\nimg/0.png,1\nimg/1.png,0\nimg/2.png,1\n")
    return folder / "labels.csv"


def test_two_registries_ingest_a_dataset_of_one_name_and_both_stay_readable(tmp_path, make_registry):
    urls = {v: f"sqlite:///{tmp_path / f'reg{v}.db'}" for v in (50, 150)}
    for value, url in urls.items():
        out = runner.invoke(app, ["--db", url, "ingest", "csv", str(_csv(tmp_path / f"src{value}", value)),
                                  "--name", "mine", "--image-size", "16", "--workers", "1", "--json"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["dataset_id"] == 1
    paths = set()
    for value, url in urls.items():
        show = json.loads(runner.invoke(app, ["--db", url, "datasets", "show", "mine", "--json"]).stdout)
        paths.add(show["cache_path"])
        cache = np.load(show["cache_path"], mmap_mode="r")
        with make_registry(url).session() as s:
            rows = dict(s.execute(select(Image.key, Image.cache_index)).all())
        assert [int(cache[rows[f"img/{i}.png"]][8, 8]) for i in range(3)] == [value, value + 1, value + 2]
    assert len(paths) == 2 and all(Path(p).parent == Path(next(iter(paths))).parent for p in paths)
    # a second size of each: its own file too
    for value, url in urls.items():
        out = runner.invoke(app, ["--db", url, "ingest", "csv", str(tmp_path / f"src{value}" / "labels.csv"),
                                  "--name", "mine", "--image-size", "24", "--workers", "1", "--json"])
        assert out.exit_code == 0, out.output
        cache = np.load(json.loads(out.stdout)["cache_path"], mmap_mode="r")
        assert cache.shape == (3, 24, 24) and int(cache[0][12, 12]) in (value, value + 1, value + 2)


def test_two_runs_1_in_two_registries_do_not_share_a_folder(tmp_path, make_registry):
    files = []
    for name in ("a", "b"):
        reg = make_registry(f"sqlite:///{tmp_path / f'{name}.db'}")
        build_dataset(reg, tmp_path / name, n=60, size=16, seed=0 if name == "a" else 1)
        result = finetune(reg, dataset="toy", epochs=1, seed=0 if name == "a" else 1,
                          arch="vit_tiny_patch16_224", model_kwargs=TINY, batch_size=32, device="cpu")
        assert result.run_id == 1
        with reg.session() as s:
            best = s.scalar(select(Checkpoint).where(Checkpoint.run_id == 1, Checkpoint.role == "best"))
            files.append((Path(best.path), best.sha256))
    assert files[0][0].parent != files[1][0].parent
    for path, sha in files:  # each registry's checkpoint is still the file it registered
        assert sha256_file(path) == sha and load_file(path)


def test_rows_made_before_the_token_keep_their_files(tmp_path, registry):
    from vitmed_cli.datasets.ingest import _size_cache_path
    from vitmed_cli.registry.models import Dataset, Run
    from vitmed_cli.training.records import run_folder

    old_run = Run(id=7, config={"train": {}})
    assert run_folder(old_run, registry.workspace) == registry.workspace.checkpoint_dir / "run-7"
    new_run = Run(id=7, config={"run_dir": str(tmp_path / "run-7-0a1b2c3d")})
    assert run_folder(new_run, registry.workspace) == tmp_path / "run-7-0a1b2c3d"
    old = Dataset(id=3, name="mine", cache_path=str(tmp_path / "mine-3-224px.npy"), options={})
    assert _size_cache_path(old, 512) == tmp_path / "mine-3-512px.npy"
    new = Dataset(id=3, name="mine", cache_path=str(tmp_path / "mine-3-0a1b2c3d-224px.npy"),
                  options={"caches": {"1024": {"path": str(tmp_path / "elsewhere.npy")}}})
    assert _size_cache_path(new, 512) == tmp_path / "mine-3-0a1b2c3d-512px.npy"
    assert _size_cache_path(new, 1024) == tmp_path / "elsewhere.npy"  # a recorded file stays its file
