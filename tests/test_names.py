"""Names: one length rule on both back ends, checked before anything is written; addressable inits."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from sqlalchemy import func, select
from typer.testing import CliRunner

from vitmed_cli.cli import app
from vitmed_cli.datasets.ingest import ingest_dataset
from vitmed_cli.errors import ConfigError
from vitmed_cli.registry.models import Checkpoint, Dataset
from vitmed_cli.splits import make_split
from vitmed_cli.weights import pretrain_load, resolve_init

runner = CliRunner()


@pytest.mark.parametrize("length", [129, 245, 300])
def test_a_dataset_name_longer_than_the_registry_keeps_is_refused_up_front(any_registry, tmp_path, length):
    name = "n" * length
    with pytest.raises(ConfigError, match=f"the dataset name is {length} characters long; the registry "
                                          "keeps at most 128 - choose a shorter `name`"):
        ingest_dataset(any_registry, "synthetic", tmp_path / "syn", name=name, n_images=12, image_size=16)
    with any_registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0
    assert not (tmp_path / "syn").exists()  # refused before the files were written


def test_the_longest_name_works_on_both_back_ends_and_its_cache_file_stays_short(any_registry, tmp_path):
    name = "n" * 128
    out = ingest_dataset(any_registry, "synthetic", tmp_path / "syn", name=name, n_images=12, image_size=16)
    assert out.n_images == 12
    assert len(out.cache_path.rsplit("/", 1)[1]) < 64
    assert make_split(any_registry, name, name="s" * 128)["name"] == "s" * 128
    with pytest.raises(ConfigError, match="the split name is 129 characters long"):
        make_split(any_registry, name, name="s" * 129)
    with pytest.raises(ConfigError, match="holds a control character"):
        make_split(any_registry, name, name="bad\x00name")


def test_cli_names_the_flag(sqlite_url, tmp_path):
    res = runner.invoke(app, ["--db", sqlite_url, "ingest", "synthetic", str(tmp_path / "s"), "--name",
                              "x" * 200, "--n-images", "12"])
    assert res.exit_code == 1
    assert res.stderr.strip() == ("Error: the dataset name is 200 characters long; the registry keeps at "
                                  "most 128 - choose a shorter --name (e.g. 'xxxxxxxxxxxxxxxxxxxxxxxx')")


def _dino_file(path, seed):
    torch.manual_seed(seed)
    kw = {"depth": 1, "embed_dim": 48, "num_heads": 2}
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=70, **kw)
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("head")}, path)
    return kw


def test_a_second_file_under_one_name_is_announced_and_addressable(registry, sqlite_url, tmp_path, monkeypatch):
    kw = _dino_file(tmp_path / "a.pth", 0)
    _dino_file(tmp_path / "b.pth", 1)
    first = pretrain_load(registry, "dinov2", file=tmp_path / "a.pth", arch="vit_small_patch14_dinov2",
                          model_kwargs=kw)
    assert first.others == () and first.note() is None
    second = pretrain_load(registry, "dinov2", file=tmp_path / "b.pth", arch="vit_small_patch14_dinov2",
                           model_kwargs=kw)
    assert second.others == (first.checkpoint_id,)
    assert second.note() == (f"dinov2 now names 2 registered files: `init` dinov2 uses the newest (checkpoint "
                             f"{second.checkpoint_id}); the others are dinov2@{first.checkpoint_id}")
    with registry.session() as s:
        newest = resolve_init(s, "dinov2")
        assert newest.checkpoint_id == second.checkpoint_id and newest.others == (first.checkpoint_id,)
        assert f"choose another with `init` dinov2@{first.checkpoint_id}" in newest.choice_note()
        older = resolve_init(s, f"dinov2@{first.checkpoint_id}")
        assert older.checkpoint_id == first.checkpoint_id and older.name == "dinov2"
        with pytest.raises(Exception, match=f"checkpoint {first.checkpoint_id} is registered as 'dinov2', not 'imagenet'"):
            resolve_init(s, f"imagenet@{first.checkpoint_id}")
    # no file and none in the HF cache: the registered ones are named, not a download URL
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    res = runner.invoke(app, ["--db", sqlite_url, "pretrain-load", "dinov2", "--arch", "vit_small_patch14_dinov2"])
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: dinov2 weights are already registered as checkpoint(s) "
                                 f"{second.checkpoint_id} (vit_small_patch14_dinov2, sha256 ")
    assert "fine-tune with --init dinov2 (the newest) or dinov2@ID; to register another file give --file" in res.stderr
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Checkpoint)) == 2
    listed = json.loads(runner.invoke(app, ["--db", sqlite_url, "checkpoints", "list", "--json"]).stdout)
    assert [c["id"] for c in listed] == [first.checkpoint_id, second.checkpoint_id]
