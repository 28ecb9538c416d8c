"""Choices and defaults shared by the library and the CLI, importable without torch.

The CLI imports this module to build its options; the heavy modules (``train``,
``predict``, ``data``) import the same names, so a default is written once.
"""

from __future__ import annotations

from enum import Enum


class UncertainPolicy(str, Enum):
    """What an uncertain label (-1) becomes: negative, positive, or left out of the loss/AUC."""

    zeros = "zeros"
    ones = "ones"
    ignore = "ignore"


class Part(str, Enum):
    """A part of a split."""

    train = "train"
    val = "val"
    test = "test"


# Fine-tuning, as in the study unless said otherwise.
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = 1e-5
DEFAULT_WEIGHT_DECAY = 0.01
DEFAULT_MAX_ROTATION = 10.0
DEFAULT_NUM_WORKERS = 1
SCHEDULERS = ("constant", "cosine")

# Prediction.
DEFAULT_PREDICT_BATCH = 64
