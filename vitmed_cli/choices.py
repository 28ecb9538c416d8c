"""Every choice the CLI offers and the defaults it shows, defined once and importable without torch.

The CLI builds its options from these enums; the library checks values against
the same ones (``Format.names()`` etc.), so a choice or a default is written in
one place only.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A fixed set of string values; the CLI shows them as choices, the library checks them."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)

    @classmethod
    def parse(cls, value: "str | Choice", what: str | None = None) -> "Choice":
        """``value`` as a member; a clear error naming ``what`` and the valid values otherwise."""
        from .errors import ConfigError

        try:
            return cls(getattr(value, "value", value))
        except ValueError:
            label = what or cls.__name__
            raise ConfigError(
                f"unknown {label} {value!r} - use one of: {', '.join(cls.names())}"
            ) from None


class Format(Choice):
    """Dataset layouts that ``ingest`` reads (one reader module each)."""

    vindr = "vindr"
    chexpert = "chexpert"
    mimic = "mimic"
    cxr14 = "cxr14"
    padchest = "padchest"
    csv = "csv"
    synthetic = "synthetic"


class LabelPolicy(Choice):
    """How VinDr-CXR's three radiologists are combined."""

    majority = "majority"
    any = "any"


class Flavour(Choice):
    """Which of the two related synthetic datasets to write."""

    source = "source"
    target = "target"


class UncertainPolicy(Choice):
    """What an uncertain label (-1) becomes: negative, positive, or left out of the loss/AUC."""

    zeros = "zeros"
    ones = "ones"
    ignore = "ignore"


class Part(Choice):
    """A part of a split."""

    train = "train"
    val = "val"
    test = "test"


class Device(Choice):
    """Where a model runs: a GPU when there is one (auto), or explicitly."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Scheduler(Choice):
    """Learning-rate schedule: constant (the study) or linear warm-up then cosine decay."""

    constant = "constant"
    cosine = "cosine"


class CheckpointRole(Choice):
    """What a registered weights file is: a starting point, or a run's best / last epoch."""

    init = "init"
    best = "best"
    last = "last"


class RunRole(Choice):
    """Which of a run's checkpoints to use."""

    best = "best"
    last = "last"


class RunFilter(Choice):
    """A run status to list, or ``stale``: running, but its process is gone."""

    running = "running"
    completed = "completed"
    failed = "failed"
    interrupted = "interrupted"
    stale = "stale"


class ReportFormat(Choice):
    """One self-contained HTML page, or Markdown with PNG figures beside it."""

    html = "html"
    md = "md"


class Tune(Choice):
    """What a run trains: everything (the study), a linear head on a frozen backbone, or the last
    N blocks and the head (``last:N``)."""

    all = "all"
    head = "head"
    last = "last"


def parse_tune(value: "str | Tune") -> tuple[str, int | None]:
    """``all``, ``head`` or ``last:N`` as (mode, N); a ConfigError naming `tune` otherwise."""
    from .errors import ConfigError

    raw = str(getattr(value, "value", value)).strip()
    mode, sep, n = raw.partition(":")
    if mode in (Tune.all.value, Tune.head.value) and not sep:
        return mode, None
    if mode == Tune.last.value and sep and n.isdigit() and int(n) >= 1:
        return mode, int(n)
    raise ConfigError(f"`tune` must be all, head or last:N with N >= 1 blocks (e.g. last:2), got {raw!r}")


class Normalise(Choice):
    """Model input: the initialisation's mean/std (``init``), or the image in [0, 1] as the
    study fed it (``none``: ``ToTensor`` only)."""

    init = "init"
    none = "none"


class RunStatus(Choice):
    """Where a run stands."""

    running = "running"
    completed = "completed"
    failed = "failed"
    interrupted = "interrupted"


# Fine-tuning.  Where a default is not the study's choice, the study's value is beside it
# (STUDY_*, from its published code: ../shared/study/tayebi2024.md) and the option's help
# says so.
DEFAULT_EPOCHS = 10
STUDY_EPOCHS = 100
DEFAULT_BATCH_SIZE = 32
STUDY_BATCH_SIZE = 30
DEFAULT_LR = 1e-5  # the study's
DEFAULT_WEIGHT_DECAY = 0.01
STUDY_WEIGHT_DECAY = 0.0
DEFAULT_ROTATION = 10.0  # degrees, drawn uniformly from +-ROTATION
STUDY_ROTATION = 7.0
DEFAULT_FLIP = True  # horizontal flip, p = 0.5: the study's
DEFAULT_NORMALISE = Normalise.init.value
STUDY_NORMALISE = Normalise.none.value
DEFAULT_NUM_WORKERS = 1
DEFAULT_TUNE = Tune.all.value

# Ingest.
DEFAULT_IMAGE_SIZE = 224
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 2048  # the cache sizes ingest accepts, in pixels
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS)

# Prediction.
DEFAULT_PREDICT_BATCH = 64

# Statistics.
# 10,000 bootstrap resamples: the smallest two-sided p is 2 / (B + 1), so p < 0.001 needs
# B >= 2,000 (1,000 floored p at 0.002); the paper's "P < 0.001" claims are reachable.
DEFAULT_RESAMPLES = 10_000
DEFAULT_ALPHA = 0.05
