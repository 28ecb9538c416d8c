"""One reader per source layout, chosen by name through :data:`READERS`.

A reader takes the download's path (and its own options) and returns a
:class:`~vitmed_cli.datasets.records.RecordSet`; it never touches the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...choices import Format
from ...errors import ConfigError
from ..records import RecordSet
from .chexpert import read_chexpert
from .cxr14 import read_cxr14
from .generic import read_generic_csv
from .mimic import read_mimic
from .padchest import read_padchest
from .synthetic import read_synthetic
from .vindr import read_vindr


@dataclass(frozen=True)
class Reader:
    """A source layout: its reader and the options that reader takes."""

    read: Callable[..., RecordSet]
    options: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()


READERS: dict[str, Reader] = {
    Format.vindr.value: Reader(read_vindr, frozenset({"label_policy"})),
    Format.chexpert.value: Reader(read_chexpert),
    Format.mimic.value: Reader(read_mimic),
    Format.cxr14.value: Reader(read_cxr14),
    Format.padchest.value: Reader(read_padchest),
    Format.csv.value: Reader(read_generic_csv, frozenset({"path_col", "patient_col", "view_col", "findings",
                                                                 "allow_outside"})),
    Format.synthetic.value: Reader(read_synthetic, frozenset({"n_images", "seed", "flavour"}),
                                   required=frozenset({"n_images"})),
}
OPTION_NOTES = {"label_policy": "several radiologists per image"}
assert set(READERS) == set(Format.names()), "every Format needs a reader"


def check_options(fmt: str, options: dict[str, Any]) -> dict[str, Any]:
    """The reader options that were given (None = not given); refuse those the format does not take."""
    reader = READERS[fmt]
    given = {k: getattr(v, "value", v) for k, v in options.items() if v is not None}
    for option in sorted(set(given) - reader.options):
        owners = [name for name, r in READERS.items() if option in r.options]
        why = f" ({OPTION_NOTES[option]})" if option in OPTION_NOTES else ""
        raise ConfigError(
            f"`{option}` applies to {' and '.join(owners) or 'no format'} only{why} - remove it for {fmt}"
        )
    missing = sorted(reader.required - set(given))
    if missing:
        raise ConfigError(f"the {fmt} format needs {', '.join('`' + k + '`' for k in missing)}")
    return given


def read_dataset(fmt: str, path: Path, **options: Any) -> RecordSet:
    """The records of one download, without touching the registry."""
    fmt = Format.parse(fmt, "ingest format").value
    return READERS[fmt].read(Path(path), **check_options(fmt, options))


__all__ = ["READERS", "Reader", "check_options", "read_dataset"]
