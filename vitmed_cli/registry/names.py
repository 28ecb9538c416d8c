"""One rule for the names users give (datasets, splits, initialisations, evaluations).

A name must fit the narrowest registry column it is stored in, the same on SQLite (which
would accept any length) and PostgreSQL (which refuses what exceeds VARCHAR(n)), and must
not hold control characters (PostgreSQL refuses NUL; a newline breaks every table).  The
check runs before anything is read or written.
"""

from __future__ import annotations

import unicodedata

from sqlalchemy.orm import InstrumentedAttribute

from ..errors import ConfigError


def column_length(column: InstrumentedAttribute) -> int:
    return int(column.property.columns[0].type.length)


def check_name(value: str, *columns: InstrumentedAttribute, param: str, what: str) -> str:
    """``value`` when it is a valid name for every column in ``columns``; a ConfigError otherwise."""
    if value is None or not str(value).strip():
        raise ConfigError(f"`{param}` must not be empty - name the {what}")
    value = str(value)
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        raise ConfigError(f"the {what} name {value[:40]!r} holds a control character ({bad!r}) - "
                          f"choose a `{param}` of printable characters")
    limit = min(column_length(c) for c in columns)
    if len(value) > limit:
        raise ConfigError(
            f"the {what} name is {len(value)} characters long; the registry keeps at most {limit} - "
            f"choose a shorter `{param}` (e.g. {value[: min(limit, 24)]!r})"
        )
    return value
