"""Every error vitmed expects a user to meet: one base class, one line each.

The CLI catches :class:`VitmedError` in one place and prints ``str(error)``;
so each message names the thing that is wrong and how to fix it.
"""

from __future__ import annotations


class VitmedError(Exception):
    """A user-facing error: the message names the thing and the fix."""


class ConfigError(VitmedError):
    """A bad setting: registry URL, workspace folder, option value."""


class RegistryUnavailable(VitmedError):
    """The registry database cannot be reached or opened."""


class SchemaError(VitmedError):
    """The registry's schema does not match this version of vitmed."""


class NotFound(VitmedError):
    """A named dataset, split, run, checkpoint or evaluation does not exist."""


class AlreadyExists(VitmedError):
    """Something with that name is already registered."""


class InputError(VitmedError):
    """An input file or folder is missing or not in the expected layout."""


class WeightsError(VitmedError):
    """A weight file is missing, unsafe or does not fit the architecture."""


class TrainingError(VitmedError):
    """Training cannot start or continue with these data and options."""


class StatsError(VitmedError):
    """Arrays handed to a statistic do not fit together."""


class IncompleteDataset(VitmedError):
    """A dataset whose ingest stopped before the end: registration or image cache unfinished."""


class StorageError(VitmedError):
    """A file vitmed writes does not fit on its disk, or the process writing it died."""


class RefusedError(VitmedError):
    """An action was refused because it would lose or corrupt stored work."""
