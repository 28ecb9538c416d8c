"""Lookups every layer shares: a dataset, split, run or evaluation by name or id, and
the one rule for which images training and evaluation use.

Each function takes an open session; a missing row is a :class:`NotFound`
naming what exists and how to make it.
"""

from __future__ import annotations

import shlex
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import aliased

from ..errors import IncompleteDataset, NotFound
from .models import Dataset, Evaluation, Image, Run, Split


KNOWN_VIEWS = ("frontal", "lateral")


def used_images(dataset_id: int, *, frontal_only: bool = True, cached: bool = True):
    """SQL condition on :class:`Image`: the images that training and evaluation use.

    With ``cached``, readable and in the image cache (an imported evaluation may cover
    images vitmed could not read); with ``frontal_only``, frontal views - and 'unknown' ones
    only in a dataset that has no view information at all (there an unknown view is not a
    hidden lateral).  Training, ``predict`` and ``evals import`` select images through this.
    """
    cond = and_(Image.cache_index.is_not(None), or_(Image.readable.is_(None), Image.readable.is_(True))) \
        if cached else Image.id.is_not(None)
    if not frontal_only:
        return cond
    other = aliased(Image)  # not correlated with the outer row
    any_known = exists().where(other.dataset_id == dataset_id, other.view.in_(KNOWN_VIEWS))
    return and_(cond, or_(Image.view == "frontal", and_(Image.view == "unknown", ~any_known)))


def unlabelled_keys(dataset: Dataset) -> set[str]:
    """Keys of images whose source carries no label information (left out like laterals)."""
    return set((dataset.options or {}).get("unlabelled_keys") or ())


def get_dataset(session, name: str) -> Dataset:
    ds = session.scalar(select(Dataset).where(Dataset.name == name))
    if ds is None:
        known = session.scalars(select(Dataset.name).order_by(Dataset.name)).all()
        hint = f"known: {', '.join(known)}" if known else "none is registered yet - run vitmed ingest first"
        raise NotFound(f"unknown dataset {name!r} ({hint})")
    return ds


def get_split(session, dataset: Dataset, name: str | None) -> Split:
    """The named split of ``dataset``; without a name, its only or newest split."""
    q = select(Split).where(Split.dataset_id == dataset.id)
    if name is not None:
        sp = session.scalar(q.where(Split.name == name))
        if sp is None:
            known = session.scalars(select(Split.name).where(Split.dataset_id == dataset.id)).all()
            hint = f"known: {', '.join(known)}" if known else f"run: vitmed split {dataset.name}"
            raise NotFound(f"dataset {dataset.name!r} has no split {name!r} ({hint})")
        return sp
    sp = session.scalar(q.order_by(Split.created_at.desc(), Split.id.desc()))
    if sp is None:
        raise NotFound(
            f"dataset {dataset.name!r} has no split yet - run: vitmed split {dataset.name}"
        )
    return sp


def get_run(session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run with id {run_id} - see vitmed runs list")
    return run


def get_evaluation(session, evaluation_id: int) -> Evaluation:
    ev = session.get(Evaluation, evaluation_id)
    if ev is None:
        raise NotFound(f"no evaluation with id {evaluation_id} - see vitmed evals list")
    return ev


def run_tune(run: Run | None) -> str | None:
    """What a run trained (``all``, ``head``, ``last:N``) from its stored configuration; runs made
    before vitmed recorded it trained everything.  None for no run (an imported evaluation)."""
    if run is None:
        return None
    train = (run.config or {}).get("train")
    if not isinstance(train, dict):
        return "all"
    return str(train.get("tune") or "all")


# --- is the dataset's ingest finished? -------------------------------------------------------

INGEST_ARGS = "ingest_args"  # Dataset.options: the reader options ingest was given (for its resume command)
REGISTRATION = "registration"  # Dataset.options: "incomplete" until the last batch of images is in
# reader options datasets registered before INGEST_ARGS was recorded keep at the top of their options
_OLDER_ARGS = ("path_col", "patient_col", "view_col", "findings", "n_images", "seed", "flavour")


def image_states(session, dataset_id: int) -> dict[str, int]:
    """Images of a dataset by cache state: ``n_cached``, ``n_unreadable`` (tried and failed: they
    never cache) and ``n_not_cached`` (not tried yet: an ingest that stopped before the end)."""
    rows = session.execute(
        select(Image.readable, func.count()).where(Image.dataset_id == dataset_id).group_by(Image.readable)
    ).all()
    by = {readable: int(n) for readable, n in rows}
    return {"n_images": sum(by.values()), "n_cached": by.get(True, 0), "n_unreadable": by.get(False, 0),
            "n_not_cached": by.get(None, 0)}


def registration_complete(dataset: Dataset) -> bool:
    return (dataset.options or {}).get(REGISTRATION) != "incomplete"


def ingest_command(dataset: Dataset) -> str:
    """The ``vitmed ingest`` command that registered the dataset: run again, it resumes."""
    options = dataset.options or {}
    args: dict[str, Any] = options.get(INGEST_ARGS)
    if not isinstance(args, dict):
        args = {k: options[k] for k in _OLDER_ARGS if options.get(k) is not None}
        if dataset.label_policy:
            args["label_policy"] = dataset.label_policy
    words = ["vitmed", "ingest", dataset.format, dataset.source_path, "--name", dataset.name,
             "--image-size", str(dataset.image_size)]
    for key, value in sorted(args.items()):
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value is not None and value is not False:
            words += [flag, ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    return shlex.join(words)


def require_complete(session, dataset: Dataset, action: str) -> None:
    """Refuse to ``action`` (e.g. "split it") a dataset whose ingest stopped before the end,
    naming what is missing and the command that finishes it."""
    if not registration_complete(dataset):
        missing = "its registration stopped before the last images were registered"
    else:
        states = image_states(session, dataset.id)
        if not states["n_not_cached"]:
            return
        missing = (f"{states['n_not_cached']} of its {states['n_images']} images are not cached yet "
                   "(the ingest stopped before the end)")
    raise IncompleteDataset(
        f"dataset {dataset.name!r} is incomplete: {missing} - finish it before you {action} with: "
        f"{ingest_command(dataset)}"
    )
