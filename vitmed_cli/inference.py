"""Running a model: the device, its input normalisation, logits and probabilities.

Training (validation every epoch) and prediction both score images through
:func:`predict_logits`, so a model sees the same input both times:
grayscale uint8 from the cache, resized when the run trains at another size,
expanded to the model's channels and normalised as the run chose
(:func:`input_norm`): with the model's own mean/std (timm's pretrained config,
never retyped; ``normalise`` init) or not at all, the image in [0, 1] as the study
fed it (``normalise`` none: torchvision's ``ToTensor`` only).  On a GPU the forward pass runs
under bf16 autocast (fp16 where bf16 is missing) with channels-last memory.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .choices import Device, Normalise
from .datasets.loader import BatchLoader
from .errors import TrainingError


def resolve_device(device: str, local_rank: int | None = None) -> torch.device:
    """``auto`` -> this process's GPU (``local_rank`` under torchrun) when there is one, else the CPU."""
    device = Device.parse(device, "device").value
    if device == Device.cuda.value and not torch.cuda.is_available():
        raise TrainingError("`device` cuda but no CUDA device is visible - use `device` cpu or auto")
    if device in (Device.auto.value, Device.cuda.value) and torch.cuda.is_available():
        return torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    return torch.device("cpu")


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs that have it, fp16 (with a gradient scaler) on others, fp32 on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device):
    """The forward pass's autocast context on ``device`` (a no-op on the CPU)."""
    amp = amp_dtype_for(device)
    return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


def model_norm(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model's input mean and std, from timm's pretrained config (never retyped)."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


def input_norm(model: torch.nn.Module, normalise: str = "init") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std a run's inputs are normalised with: the model's own (``init``), or
    zero and one (``none``: the image in [0, 1]), one value per input channel."""
    normalise = Normalise.parse(normalise, "normalise").value
    mean, std = model_norm(model)
    if normalise == Normalise.none.value:
        return (0.0,) * len(mean), (1.0,) * len(std)
    return mean, std


def model_input(
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    size: int | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Grayscale (B, S, S) uint8 or (B, 1, S, S) float in 0..255 -> normalised (B, 3, size, size)."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    x = x.float()
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < x.shape[-1])
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    # (x/255 - mean)/std as one fused op; expands the gray channel to the model's channels
    out = torch.addcmul(-mean_t / std_t, x, 1.0 / (255.0 * std_t))
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    loader: BatchLoader,
    n: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    device: torch.device,
    n_outputs: int,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Logits (n, F) of ``model`` on the loader's positions (this rank's shard; others stay NaN)."""
    was_training = model.training
    model.eval()
    cl = device.type == "cuda"
    out = np.full((n, n_outputs), np.nan, dtype=np.float32)
    try:
        for batch in loader.iter_epoch(0):
            x = model_input(batch.images, mean, std, size=image_size, channels_last=cl)
            with autocast(device):
                logits = model(x)
            out[batch.positions] = logits.float().cpu().numpy()
            if on_batch:
                on_batch(len(batch.positions))
    finally:
        model.train(was_training)
    return out


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Sigmoid of the logits, in float64 (scipy's expit: no overflow for large logits)."""
    from scipy.special import expit

    return expit(np.asarray(logits, dtype=np.float64))


__all__ = [
    "amp_dtype_for", "autocast", "input_norm", "model_input", "model_norm", "predict_logits", "probabilities",
    "resolve_device",
]
