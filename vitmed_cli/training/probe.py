"""Linear probes that cost one forward pass: ``tune head`` on stored backbone features.

A frozen backbone maps each image to the same features in every probe, so
:func:`ensure_features` computes them once (the backbone's pre-logits output: timm's
``forward_head(..., pre_logits=True)``, in eval mode, without augmentation) and stores
them beside the image cache, in ``<workspace>/cache/features/<key>/``.  The key is the
sha256 of what the features depend on: the initialisation's sha256 (the seed for a
random one), architecture and model options, image size, input normalisation (the run's
``normalise`` and the mean/std it gives), precision and the image cache file itself.  Every later probe, seed and learning rate reads them
back, and computes only rows that are not stored yet.

:class:`ProbeLoop` is :class:`~.loop.TrainingLoop` with the head trained on those
features: the same Trainer (AdamW over the head), loss, data order (the loader's
seeded permutation) and validation, so it trains the head the end-to-end frozen run
(``feature_cache`` off) trains, at the cost of a linear layer per step.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._util import atomic_write
from ..datasets.loader import BatchLoader
from ..errors import TrainingError
from ..events import Listener, progress
from ..inference import amp_dtype_for, autocast, model_input
from ..registry.models import Run
from . import records
from .config import TrainConfig
from .loop import StopRequest, TrainingLoop
from .tuning import classifier_of

FEATURES_VERSION = 1  # bump when what is stored changes meaning
_FLUSH_EVERY = 32  # batches between marking rows done (an interrupted pass keeps them)


def uses_feature_cache(cfg: TrainConfig) -> bool:
    """A run that trains its head on stored features (``tune head`` with the cache on)."""
    return cfg.tune == "head" and cfg.feature_cache


def _cache_identity(cache_path: str) -> dict[str, Any]:
    st = os.stat(cache_path)
    mm = np.load(cache_path, mmap_mode="r")
    return {"path": str(Path(cache_path).resolve()), "shape": list(mm.shape), "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def feature_key(*, init_sha256: str | None, seed: int, arch: str, model_kwargs: dict[str, Any],
                image_size: int, normalise: str, mean, std, precision: str,
                cache_path: str) -> tuple[str, dict[str, Any]]:
    """The features' key and what it is made of (stored beside them, shown in the run's record)."""
    parts = {
        "version": FEATURES_VERSION,
        "init_sha256": init_sha256,
        "random_seed": None if init_sha256 else int(seed),  # a random backbone depends on its seed
        "arch": arch, "model_kwargs": model_kwargs, "image_size": int(image_size),
        "normalise": str(normalise), "mean": [float(v) for v in mean], "std": [float(v) for v in std], "precision": precision,
        "augment": False, "output": "pre_logits", "image_cache": _cache_identity(cache_path),
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest(), parts


class FeatureStore:
    """Features of one (backbone, preprocessing, image cache): a float32 (rows, dim) memmap and a
    mask of the rows computed, under ``folder``."""

    def __init__(self, folder: Path, n_rows: int, dim: int, parts: dict[str, Any]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "features.npy"
        self.mask_path = self.folder / "done.npy"
        if self.path.is_file():
            self.features = np.load(self.path, mmap_mode="r+")
            if self.features.shape != (n_rows, dim):
                raise TrainingError(
                    f"the stored features {self.path} have shape {self.features.shape}, not "
                    f"{(n_rows, dim)} - delete the folder {self.folder} and run again"
                )
        else:
            fd, tmp = tempfile.mkstemp(prefix=".features.", suffix=".npy", dir=self.folder)
            os.close(fd)
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_rows, dim)).flush()
            try:  # of two processes creating the store at once, the first one's file stays
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
            self.features = np.load(self.path, mmap_mode="r+")
            atomic_write(self.folder / "key.json", json.dumps(parts, indent=1, default=str).encode())
        self.done = np.load(self.mask_path) if self.mask_path.is_file() else np.zeros(n_rows, dtype=bool)

    def missing(self, rows: np.ndarray) -> np.ndarray:
        """The rows (sorted, unique) whose features are not stored yet."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        return rows[~self.done[rows]]

    def mark_done(self, rows: np.ndarray) -> None:
        """Rows written: flush the features first, then the mask (a crash never marks unwritten rows)."""
        self.features.flush()
        self.done[rows] = True
        atomic_write(self.mask_path, writer=lambda fh: np.save(fh, self.done))

    def read(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.features[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


@torch.no_grad()
def backbone_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the classifier sees: timm's pooled, normalised pre-logits output."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def ensure_features(model: torch.nn.Module, store: FeatureStore, rows: np.ndarray, *, cache_path: str,
                    mean, std, image_size: int, device: torch.device, batch_size: int, num_workers: int,
                    on_event: Listener | None = None) -> int:
    """Compute and store the features of ``rows`` not stored yet; how many were computed."""
    todo = store.missing(rows)
    if todo.size == 0:
        return 0
    was_training = model.training
    model.eval()
    loader = BatchLoader(cache_path, todo, None, batch_size=batch_size, shuffle=False, augment=False,
                         device=device, num_workers=num_workers)
    n_batches, done, pending = len(loader), 0, []
    try:
        for batch in loader.iter_epoch(0):
            x = model_input(batch.images, mean, std, size=image_size, channels_last=device.type == "cuda")
            with autocast(device):
                feats = backbone_features(model, x)
            rows_b = todo[batch.positions]
            store.features[rows_b] = feats.float().cpu().numpy()
            pending.append(rows_b)
            done += 1
            if done % _FLUSH_EVERY == 0:
                store.mark_done(np.concatenate(pending))
                pending = []
            progress(on_event, "backbone features (once)", done, n_batches)
        if pending:
            store.mark_done(np.concatenate(pending))
    finally:
        model.train(was_training)
    return int(todo.size)


class ProbeLoop(TrainingLoop):
    """A ``tune head`` run: the loop of :class:`TrainingLoop`, the head trained on stored features."""

    def _build(self, resume_state: dict[str, Any] | None) -> None:
        if self.info.world_size > 1:  # also refused before the run starts (api)
            raise TrainingError("`tune` head trains on stored features in one process - run it without torchrun")
        super()._build(resume_state)
        model, prep, cfg = self.trainer.model, self.prep, self.cfg
        self.classifier = classifier_of(model)
        with self.registry.session(readonly=True) as s:
            init_sha = s.get(Run, self.run_id).init_sha256
        amp = amp_dtype_for(self.device)
        key, parts = feature_key(init_sha256=init_sha, seed=cfg.seed, arch=str(cfg.arch),
                                 model_kwargs=dict(cfg.model_kwargs), image_size=self.image_size,
                                 normalise=cfg.normalise, mean=self.mean, std=self.std, precision=str(amp or "float32"),
                                 cache_path=prep.cache_path)
        folder = self.registry.workspace.cache_dir / "features" / key[:32]
        with torch.no_grad():
            dim = int(backbone_features(model.eval(), torch.zeros(
                1, 3, self.image_size, self.image_size, device=self.device)).shape[-1])
        model.train()
        n_rows = int(np.load(prep.cache_path, mmap_mode="r").shape[0])
        store = FeatureStore(folder, n_rows, dim, parts)
        rows = np.concatenate([prep.train.cache_rows, prep.val.cache_rows])
        t0 = time.perf_counter()
        computed = ensure_features(model, store, rows, cache_path=prep.cache_path, mean=self.mean,
                                   std=self.std, image_size=self.image_size, device=self.device,
                                   batch_size=cfg.batch_size * 2, num_workers=cfg.num_workers,
                                   on_event=self.on_event)
        record = {"key": key, "path": str(folder), "computed": computed,
                  "reused": int(np.unique(rows).size - computed), "dim": dim,
                  "seconds": round(time.perf_counter() - t0, 3)}
        self.train_x = torch.from_numpy(store.read(prep.train.cache_rows)).to(self.device)
        self.val_x = torch.from_numpy(store.read(prep.val.cache_rows)).to(self.device)
        self.train_y = torch.from_numpy(np.ascontiguousarray(prep.train_y, dtype=np.float32)).to(self.device)
        if self.main:
            uses = list(((self._run_config() or {}).get("feature_cache_uses")) or [])
            uses.append(record)
            records.update_run(self.registry, self.run_id, config_update={
                "feature_cache": record, "feature_cache_uses": uses})

    def _run_config(self) -> dict[str, Any]:
        with self.registry.session(readonly=True) as s:
            return dict(s.get(Run, self.run_id).config or {})

    def _train_epoch(self, epoch: int, stop: StopRequest) -> tuple[bool, int]:
        """One epoch of head steps over the stored features, in the loader's order."""
        task = f"run {self.run_id} epoch {epoch + 1}/{self.cfg.epochs} (head on stored features)"
        order = torch.from_numpy(self.train_loader.positions(epoch)).to(self.device)
        bs = self.cfg.batch_size
        done = self.start_batch
        acc = torch.zeros((), dtype=torch.float64, device=self.device)
        n_seen = 0
        stopped = False
        for b in range(self.start_batch, self.n_batches):
            pos = order[b * bs:(b + 1) * bs]
            loss = self.trainer.step(self.train_x[pos], self.train_y[pos], forward=self.classifier)
            acc += loss.double() * len(pos)
            n_seen += len(pos)
            done = b + 1
            if self.main:
                progress(self.on_event, task, done, self.n_batches)
            if self.on_step:
                self.on_step(epoch, b)
            if stop.requested:
                stopped = True
                break
        self.loss_sum += float(acc.item())
        self.loss_count += n_seen
        return stopped, done

    @torch.no_grad()
    def _val_logits(self) -> np.ndarray:
        with autocast(self.device):
            logits = self.classifier(self.val_x)
        return logits.float().cpu().numpy()


__all__ = ["FeatureStore", "ProbeLoop", "backbone_features", "ensure_features", "feature_key",
           "uses_feature_cache"]
