"""Several processes, one run: the torchrun process group and what its ranks share.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) every rank trains on its shard
of each epoch, validation is sharded and gathered, and only rank 0 reads the
registry, prepares the data (then broadcasts it), reads the init weights (DDP
copies rank 0's parameters to the others when it wraps the model), writes to
the registry and saves files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def device_rank(self) -> int | None:
        """The GPU index this rank uses under torchrun (None: a single process picks its own)."""
        return self.local_rank if self.active else None


def setup(device: str) -> DistInfo:
    """Join the torchrun process group when launched under torchrun (gloo on CPU, nccl on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return DistInfo(rank=rank, world_size=world, local_rank=local, owns_group=owns)


def finish(info: DistInfo) -> None:
    """After a run that ended normally on every rank: wait until all ranks got here.

    Rank 0 writes checkpoints and registry rows after the last collective; without
    this barrier the other ranks would tear their process group down while rank 0
    still holds its connections, which can abort the gloo backend.
    """
    if info.active:
        import torch.distributed as dist

        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for configurations and prepared arrays)."""
    if not info.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when it is true on any (a stop request reaches all ranks together)."""
    if not info.active:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_logits(logits: np.ndarray, info: DistInfo) -> np.ndarray:
    """Every rank's shard of validation logits in one array (rows a rank did not score are NaN)."""
    if not info.active:
        return logits
    import torch.distributed as dist

    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, logits)
    out = parts[0].copy()
    for p in parts[1:]:
        fill = ~np.isnan(p[:, 0]) if p.shape[1] else np.zeros(len(p), bool)
        out[fill] = p[fill]
    return out
