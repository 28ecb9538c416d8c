"""Lookups every layer shares: a dataset, split, run or evaluation by name or id, and
the one rule for which images training and evaluation use.

Each function takes an open session; a missing row is a :class:`NotFound`
naming what exists and how to make it.
"""

from __future__ import annotations

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import aliased

from ..errors import NotFound
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
