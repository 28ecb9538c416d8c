"""Batches from the image cache: the data path of training and prediction.

``BatchLoader`` turns a part's cache rows and targets (:mod:`.parts`) into
batches: a seeded permutation of row indices, a gather from the memory-mapped uint8 cache into a (pinned) buffer,
a non-blocking copy to the device, and augmentation of the whole batch, so the
cost per image is O(1) and never touches a DataFrame.

Augmentation is the study's kind: a random horizontal flip (p = 0.5, ``flip``) and a
rotation drawn uniformly from +-``rotation`` degrees (the study: +-7; vitmed's default
10).  With neither (``flip`` off, ``rotation`` 0) a batch is passed through untouched,
as without ``augment``.  On a GPU the whole
batch is rotated there (``affine_grid``/``grid_sample``, bilinear); without
one the loader threads rotate with cached nearest-neighbour index maps (the
default interpolation of torchvision's ``RandomRotation``) at 0.5 degree
steps, which keeps a 2-core machine above 3,000 images/s at 224 px.
Every random draw comes from a generator seeded by (seed, epoch, batch), so a
run resumed in the middle of an epoch sees exactly the batches it would have.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TrainingError

ROTATION_STEP_DEGREES = 0.5


# --------------------------------------------------------------------------- augmentation


class _RotationMaps:
    """Nearest-neighbour index maps for quantised rotations (flip folded in), built lazily."""

    def __init__(self, size: int, rotation: float):
        self.size = size
        self.steps = max(0, int(round(rotation / ROTATION_STEP_DEGREES)))
        self._maps: dict[tuple[int, bool], np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def n_angles(self) -> int:
        return 2 * self.steps + 1

    def get(self, angle_id: int, flip: bool) -> np.ndarray:
        key = (angle_id, flip)
        m = self._maps.get(key)
        if m is None:
            with self._lock:
                m = self._maps.get(key)
                if m is None:
                    m = self._build(angle_id, flip)
                    self._maps[key] = m
        return m

    def _build(self, angle_id: int, flip: bool) -> np.ndarray:
        s = self.size
        theta = math.radians((angle_id - self.steps) * ROTATION_STEP_DEGREES)
        c = (s - 1) / 2.0
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
        if flip:
            xx = (s - 1) - xx
        x, y = xx - c, yy - c
        xs = np.rint(math.cos(theta) * x + math.sin(theta) * y + c).astype(np.int64)
        ys = np.rint(-math.sin(theta) * x + math.cos(theta) * y + c).astype(np.int64)
        inside = (xs >= 0) & (xs < s) & (ys >= 0) & (ys < s)
        idx = np.where(inside, ys * s + xs, s * s)  # s*s: the zero pixel after the image
        return np.ascontiguousarray(idx.ravel().astype(np.intp))


def batch_seed(seed: int, epoch: int, batch: int) -> list[int]:
    """Seed material of one batch's random draws (stable across runs and resumes)."""
    return [int(seed), int(epoch), int(batch), 0x7E57]


def augment_batch(x: torch.Tensor, generator: torch.Generator, *, rotation: float = 10.0,
                  flip: bool = True) -> torch.Tensor:
    """Flip and rotate a whole batch on its device; (B, S, S) uint8/float -> (B, 1, S, S) float."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    x = x.float()
    b = x.shape[0]
    dev = x.device
    ang = (torch.rand(b, generator=generator, device=dev) * 2 - 1) * math.radians(rotation)
    sign = torch.ones(b, device=dev)
    if flip:
        sign = torch.where(torch.rand(b, generator=generator, device=dev) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    zero = torch.zeros_like(ang)
    theta = torch.stack(
        [torch.stack([cos * sign, -sin, zero], 1), torch.stack([sin * sign, cos, zero], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --------------------------------------------------------------------------- loader


@dataclass
class Batch:
    images: torch.Tensor  # on the device: uint8 (B, S, S), or float (B, 1, S, S) if augmented on GPU
    targets: torch.Tensor | None  # float32 (B, F) on the device, NaN = left out
    positions: np.ndarray  # row positions in the part (for gathering predictions)
    index: int  # batch number within the epoch


@dataclass
class _HostBatch:
    images: np.ndarray
    tensor: torch.Tensor
    positions: np.ndarray
    slot: int | None = None


@dataclass
class BatchLoader:
    """Batches of a part: seeded permutation -> memmap gather -> device -> batch augmentation.

    ``rank``/``world_size`` shard each epoch's permutation like ``DistributedSampler``
    (padded so every rank gets the same number of batches when ``pad`` is set).
    """

    cache_path: str
    cache_rows: np.ndarray
    targets: np.ndarray | None
    batch_size: int
    shuffle: bool = False
    augment: bool = False
    seed: int = 0
    device: torch.device | str = "cpu"
    num_workers: int = 2
    prefetch: int = 4
    rank: int = 0
    world_size: int = 1
    pad: bool = True
    rotation: float = 10.0
    flip: bool = True
    _mm: np.ndarray | None = field(default=None, init=False, repr=False)
    _maps: _RotationMaps | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.cache_rows = np.asarray(self.cache_rows, dtype=np.int64)
        if self.batch_size < 1:
            raise TrainingError(f"`batch_size` must be at least 1, got {self.batch_size}")

    # -- sizes
    @property
    def mm(self) -> np.ndarray:
        if self._mm is None:
            self._mm = np.load(self.cache_path, mmap_mode="r")
        return self._mm

    @property
    def image_size(self) -> int:
        return int(self.mm.shape[-1])

    def positions(self, epoch: int) -> np.ndarray:
        """This rank's positions (indices into the part) for one epoch, in batch order."""
        n = len(self.cache_rows)
        if self.shuffle:
            order = np.random.default_rng([int(self.seed), int(epoch)]).permutation(n)
        else:
            order = np.arange(n)
        if self.world_size > 1:
            if self.pad and n % self.world_size:
                extra = self.world_size - n % self.world_size
                order = np.concatenate([order, order[:extra]])
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        return math.ceil(len(self.positions(0)) / self.batch_size)

    # -- host side (worker threads)
    @property
    def _augments(self) -> bool:
        """Augmentation that changes images: asked for, and a flip or a rotation to do."""
        return self.augment and (self.flip or self.rotation > 0)

    @property
    def _cpu_augment(self) -> bool:
        return self._augments and self.device.type != "cuda"

    def _gather(self, pos: np.ndarray, epoch: int, index: int, out: np.ndarray) -> None:
        rows = self.cache_rows[pos]
        mm = self.mm
        if not self._cpu_augment:
            # sorted rows read the memmap front to back; put them back in batch order after
            order = np.argsort(rows, kind="stable")
            if np.all(order == np.arange(len(order))):
                np.take(mm, rows, axis=0, out=out)
            else:
                tmp = np.take(mm, rows[order], axis=0)
                out[order] = tmp
            return
        if self._maps is None:
            self._maps = _RotationMaps(self.image_size, self.rotation)
        maps = self._maps
        rng = np.random.default_rng(batch_seed(self.seed, epoch, index))
        angles = rng.integers(0, maps.n_angles, size=len(rows))
        flips = (rng.random(len(rows)) < 0.5) & self.flip  # drawn either way: same angles
        s = self.image_size
        scratch = np.zeros(s * s + 1, dtype=np.uint8)
        flat_out = out.reshape(len(rows), s * s)
        for i, r in enumerate(rows):
            scratch[: s * s] = mm[r].reshape(-1)
            np.take(scratch, maps.get(int(angles[i]), bool(flips[i])), out=flat_out[i])

    def _produce(self, pos: np.ndarray, epoch: int, index: int, pool: "_PinnedPool | None") -> _HostBatch:
        s = self.image_size
        slot = None
        if pool is not None:
            slot, tensor = pool.acquire(len(pos))
        else:
            tensor = torch.empty((len(pos), s, s), dtype=torch.uint8)
        arr = tensor.numpy()
        self._gather(pos, epoch, index, arr)
        return _HostBatch(images=arr, tensor=tensor, positions=pos, slot=slot)

    # -- consumer side
    def iter_epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """Batches of one epoch from ``start_batch`` on, prefetched by worker threads."""
        pos_all = self.positions(epoch)
        n_batches = math.ceil(len(pos_all) / self.batch_size)
        cuda = self.device.type == "cuda"
        pool = _PinnedPool(self.batch_size, self.image_size, self.prefetch + 2) if cuda else None
        targets_t = None
        if self.targets is not None:
            targets_t = torch.from_numpy(np.ascontiguousarray(self.targets, dtype=np.float32))

        def job(b: int) -> _HostBatch:
            pos = pos_all[b * self.batch_size : (b + 1) * self.batch_size]
            return self._produce(pos, epoch, b, pool)

        workers = max(0, int(self.num_workers))
        executor = ThreadPoolExecutor(workers, thread_name_prefix="vitmed-loader") if workers else None
        pending: deque = deque()
        nxt = start_batch
        try:
            while True:
                while executor is not None and nxt < n_batches and len(pending) < self.prefetch:
                    pending.append((nxt, executor.submit(job, nxt)))
                    nxt += 1
                if executor is None:
                    if nxt >= n_batches:
                        break
                    b, host = nxt, job(nxt)
                    nxt += 1
                else:
                    if not pending:
                        break
                    b, fut = pending.popleft()
                    host = fut.result()
                images = host.tensor
                tgt = None
                if targets_t is not None:
                    tgt = targets_t[torch.from_numpy(host.positions)]
                if cuda:
                    images = images.to(self.device, non_blocking=True)
                    if tgt is not None:
                        tgt = tgt.pin_memory().to(self.device, non_blocking=True)
                    pool.release_after_copy(host.slot)
                    if self._augments:
                        gen = torch.Generator(device=self.device)
                        gen.manual_seed(_fold(batch_seed(self.seed, epoch, b)))
                        images = augment_batch(images, gen, rotation=self.rotation, flip=self.flip)
                yield Batch(images=images, targets=tgt, positions=host.positions, index=b)
        finally:
            for _, fut in pending:
                fut.cancel()
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)


def _fold(parts: list[int]) -> int:
    return int(np.random.SeedSequence(parts).generate_state(1, dtype=np.uint64)[0] >> 1)


class _PinnedPool:
    """A ring of pinned host buffers; a slot is reused only after its copy to the GPU finished."""

    def __init__(self, batch_size: int, size: int, n: int):
        self.buffers = [
            torch.empty((batch_size, size, size), dtype=torch.uint8, pin_memory=True)
            for _ in range(n)
        ]
        self.events: list = [None] * n
        self.free: deque[int] = deque(range(n))
        self.cond = threading.Condition()

    def acquire(self, rows: int) -> tuple[int, torch.Tensor]:
        with self.cond:
            while not self.free:
                self.cond.wait()
            slot = self.free.popleft()
        ev = self.events[slot]
        if ev is not None:
            ev.synchronize()
        return slot, self.buffers[slot][:rows]

    def release_after_copy(self, slot: int | None) -> None:
        if slot is None:
            return
        ev = torch.cuda.Event()
        ev.record()
        self.events[slot] = ev
        with self.cond:
            self.free.append(slot)
            self.cond.notify()
