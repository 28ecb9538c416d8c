"""Derived findings: computed from a part's stored labels each time it is loaded, never stored.

The study learned two findings no dataset has as a column: PadChest's ``nodule_mass``
(nodule or mass) and ChestX-ray14's "No Finding" (an image none of the fourteen findings
is marked on).  A run declares them (``merge`` NAME=A,B and ``no_finding`` NAME) and they
are derived from the stored labels whenever a part is loaded, for training and again for
predict, so the dataset stays as ingested.  Labels keep vitmed's convention (1 positive,
0 negative, -1 uncertain, NaN not mentioned):

* a merge is 1 where any of its findings is 1, 0 where all are 0, else -1 where any is
  uncertain, else NaN (not mentioned);
* no-finding is its complement over the dataset's findings: 0 where any finding is 1,
  1 where all are 0, else -1 where any is uncertain, else NaN.  "The dataset's findings"
  are its own columns except its non-findings (``Dataset.options["non_findings"]``, e.g.
  PadChest's 'exclude') and a native "No Finding" column.

Afterwards the run's ``uncertain`` policy applies as to any finding (not mentioned counts
as negative when training).  Names are matched as ``findings`` names are
(:func:`resolve_findings`): canonical, then native, then either ignoring case and
underscores.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, TrainingError
from ..registry.models import DERIVED_NATIVE
from .findings import normalise
from .parts import PartData

NO_FINDING = "No Finding"  # the canonical name of a native no-finding column (findings.CANONICAL)
MERGE_FORM = "NAME=A,B"
MERGE_EXAMPLE = "nodule_mass=Nodule,Mass"


def parse_merge(values: Sequence[str] | None) -> dict[str, list[str]]:
    """``["NAME=A,B", ...]`` as {NAME: [A, B]}; a ConfigError naming `merge` and the form otherwise."""
    out: dict[str, list[str]] = {}
    for raw in values or ():
        name, sep, rest = str(raw).partition("=")
        name = name.strip()
        sources = [x.strip() for x in rest.split(",")]
        if not sep or not name or not all(sources):
            raise ConfigError(f"`merge` must be {MERGE_FORM} (a new finding NAME, then the findings it "
                              f"merges), e.g. {MERGE_EXAMPLE} - got {raw!r}")
        if name in out:
            raise ConfigError(f"`merge` names {name} twice - give each merged finding its own NAME")
        out[name] = sources
    return out


def resolve_findings(names: Sequence[str], findings: Sequence[str], natives: Sequence[str]
                     ) -> tuple[list[str], list[str]]:
    """``names`` as the part's canonical names: (resolved, unknown).

    A name matches a canonical name, else a native one, else either after
    :func:`~.findings.normalise` (case, underscores, spaces), when exactly one does.
    """
    findings, natives = list(findings), list(natives) if natives else list(findings)
    by_native = {n: c for c, n in zip(findings, natives) if n != DERIVED_NATIVE}
    loose: dict[str, set[str]] = {}
    for c, n in zip(findings, natives):
        loose.setdefault(normalise(c), set()).add(c)
        if n != DERIVED_NATIVE:
            loose.setdefault(normalise(n), set()).add(c)
    resolved, unknown = [], []
    for name in names:
        if name in findings:
            resolved.append(name)
        elif name in by_native:
            resolved.append(by_native[name])
        elif len(loose.get(normalise(name), ())) == 1:
            resolved.append(next(iter(loose[normalise(name)])))
        else:
            unknown.append(name)
    return resolved, unknown


def any_positive(labels: np.ndarray) -> np.ndarray:
    """Row-wise "any of these findings": 1 where any is 1, 0 where all are 0, else -1 where any is
    uncertain, else NaN (labels (n, k) in 1/0/-1/NaN)."""
    labels = np.asarray(labels, dtype=np.float32)
    out = np.full(labels.shape[0], np.nan, dtype=np.float32)
    if labels.shape[1] == 0:
        return out
    uncertain = (labels == -1).any(axis=1)
    out[uncertain] = -1.0
    out[(labels == 0).all(axis=1)] = 0.0
    out[(labels == 1).any(axis=1)] = 1.0
    return out


def no_finding_labels(labels: np.ndarray) -> np.ndarray:
    """Row-wise "none of these findings": :func:`any_positive` with 1 and 0 swapped."""
    merged = any_positive(labels)
    out = merged.copy()
    out[merged == 1] = 0.0
    out[merged == 0] = 1.0
    return out


def no_finding_sources(part: PartData, non_findings: Sequence[str]) -> list[str]:
    """The findings a no-finding label is the absence of: the dataset's own findings but its
    non-findings and a native "No Finding"."""
    skip = set(non_findings) | {NO_FINDING}
    natives = part.natives or part.findings
    return [f for f, n in zip(part.findings, natives) if n != DERIVED_NATIVE and f not in skip]


def add_derived(part: PartData, merge: dict[str, list[str]] | None, no_finding: str | None, *,
                non_findings: Sequence[str] = (), strict: bool = True) -> tuple[PartData, dict[str, str]]:
    """``part`` with the derived findings appended as label columns, and those it could not derive.

    ``strict`` (training): a source that is not a finding of the dataset, or a NAME the dataset
    already has, is a TrainingError naming the parameter.  Otherwise (predict, possibly on
    another dataset) a NAME the dataset has is scored against its own labels, and a merge whose
    findings it lacks is left out: {NAME: why}.
    """
    merge = dict(merge or {})
    wanted: list[tuple[str, str, Any]] = [(n, "merge", s) for n, s in merge.items()]
    if no_finding:
        wanted.append((no_finding, "no_finding", None))
    if not wanted:
        return part, {}
    pairs = [(f, n) for f, n in zip(part.findings, part.natives or part.findings) if n != DERIVED_NATIVE]
    own, own_natives = [f for f, _ in pairs], [n for _, n in pairs]
    columns: list[np.ndarray] = []
    names: list[str] = []
    how: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for name, kind, sources in wanted:
        param = "`merge`" if kind == "merge" else "`no_finding`"
        if name in own:
            if strict:
                raise TrainingError(
                    f"{param} {name} is already a finding of dataset {part.dataset!r} - learn it with "
                    f"`findings`, or give the derived finding another name")
            continue  # scored against the dataset's own labels, matched by name
        if strict:
            same, _ = resolve_findings([name], own, own_natives)
            if same:
                raise TrainingError(
                    f"{param} {name} is another spelling of {same[0]}, a finding of dataset "
                    f"{part.dataset!r} - learn it with `findings`, or give the derived finding another name")
        if kind == "merge":
            resolved, unknown = resolve_findings(sources, part.findings, part.natives)
            if unknown:
                why = (f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a finding of "
                       f"dataset {part.dataset!r}")
                if strict:
                    raise TrainingError(f"{param} {name}: {why} - choose from: {', '.join(own)}")
                skipped[name] = f"derived from {', '.join(sources)}, but {why}"
                continue
            cols = [part.findings.index(f) for f in resolved]
            columns.append(any_positive(part.labels[:, cols]))
            how[name] = {"kind": "merge", "of": resolved}
        else:
            resolved = no_finding_sources(part, non_findings)
            if not resolved:
                if strict:
                    raise TrainingError(f"{param} {name}: dataset {part.dataset!r} has no findings "
                                        "to be free of")
                skipped[name] = f"dataset {part.dataset!r} has no findings to be free of"
                continue
            cols = [part.findings.index(f) for f in resolved]
            columns.append(no_finding_labels(part.labels[:, cols]))
            how[name] = {"kind": "no_finding", "of": resolved}
        names.append(name)
    if not names:
        return part, skipped
    labels = np.concatenate([part.labels, np.stack(columns, axis=1)], axis=1).astype(np.float32)
    return PartData(
        dataset=part.dataset, split=part.split, part=part.part, image_ids=part.image_ids,
        image_keys=part.image_keys, cache_rows=part.cache_rows, labels=labels,
        findings=[*part.findings, *names], finding_ids=[*part.finding_ids, *([None] * len(names))],
        cache_path=part.cache_path, image_size=part.image_size,
        natives=[*(part.natives or part.findings), *([DERIVED_NATIVE] * len(names))],
        derived={**part.derived, **how},
    ), skipped


__all__ = ["NO_FINDING", "add_derived", "any_positive", "no_finding_labels", "no_finding_sources",
           "parse_merge", "resolve_findings"]
