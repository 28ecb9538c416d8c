"""Stored evaluations: one way in (:func:`store_evaluation`), one way out (:func:`load_evaluation_arrays`).

``predict`` and ``evals import`` both store an evaluation through
:func:`store_evaluation`: the ``Evaluation`` row, one ``EvaluationMetric`` per
finding and a ``Prediction`` per image x finding (probability and the label it
was scored against; NULL = left out), in the caller's transaction.  The
predictions go in as one ``executemany`` of plain tuples through the driver
(no ORM object or dict per row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from .._util import finite_or_none
from ..errors import TrainingError
from ..registry.models import (
    DERIVED_NATIVE,
    DERIVED_POSITION,
    Evaluation,
    EvaluationMetric,
    Finding,
    Image,
    Prediction,
)
from ..registry.queries import get_evaluation

PREDICTION_COLUMNS = ("evaluation_id", "image_id", "finding_id", "probability", "label")


def insert_predictions(session, evaluation_id: int, image_ids: np.ndarray, finding_ids: Sequence[int],
                       probabilities: np.ndarray, labels: np.ndarray) -> int:
    """Bulk insert: one executemany of plain tuples; ``labels`` NaN is stored as NULL."""
    n, k = probabilities.shape
    img = np.repeat(np.asarray(image_ids, dtype=np.int64), k).tolist()
    fid = np.tile(np.asarray(finding_ids, dtype=np.int64), n).tolist()
    pr = np.asarray(probabilities, dtype=float).ravel().tolist()
    lab = [None if v != v else int(v) for v in np.asarray(labels, dtype=float).ravel().tolist()]
    rows = list(zip([evaluation_id] * (n * k), img, fid, pr, lab))
    if not rows:
        return 0
    conn = session.connection()
    table = Prediction.__table__
    style = conn.dialect.paramstyle
    if style in ("qmark", "format", "pyformat"):
        marks = ", ".join(["?" if style == "qmark" else "%s"] * len(PREDICTION_COLUMNS))
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(PREDICTION_COLUMNS)}) VALUES ({marks})", rows
        )
    else:  # pragma: no cover - other drivers go through SQLAlchemy's executemany
        conn.execute(table.insert(), [dict(zip(PREDICTION_COLUMNS, r)) for r in rows])
    return len(rows)


def derived_finding_ids(session, dataset_id: int, part) -> list[int]:
    """``part.finding_ids`` with a row id for each derived finding (None there): the dataset's row
    for that name, made on first use (native :data:`DERIVED_NATIVE`, no labels), in the caller's
    transaction.  Of two processes making one at once, the second uses the first one's row."""
    ids = list(part.finding_ids)
    for j, fid in enumerate(ids):
        if fid is not None:
            continue
        name = part.findings[j]
        ids[j] = _derived_row(session, dataset_id, name)
    return ids


def _derived_row(session, dataset_id: int, name: str) -> int:
    def existing():
        return session.scalar(select(Finding).where(Finding.dataset_id == dataset_id,
                                                    Finding.canonical == name))

    row = existing()
    if row is None:
        n = session.scalar(select(func.count()).select_from(Finding).where(
            Finding.dataset_id == dataset_id, Finding.native == DERIVED_NATIVE)) or 0
        try:
            with session.begin_nested():
                row = Finding(dataset_id=dataset_id, canonical=name, native=DERIVED_NATIVE,
                              position=DERIVED_POSITION + int(n))
                session.add(row)
        except IntegrityError:
            row = existing()
    if row is None or row.native != DERIVED_NATIVE:  # a finding of the dataset by now: never relabelled
        raise TrainingError(f"{name!r} became a finding of the dataset while predicting - predict again")
    return int(row.id)


def store_evaluation(
    session,
    evaluation: Evaluation,
    *,
    metrics: Sequence[dict[str, Any]],
    image_ids: np.ndarray,
    finding_ids: Sequence[int],
    probabilities: np.ndarray,
    labels: np.ndarray,
) -> int:
    """Store ``evaluation`` (an unsaved row), its per-finding ``metrics`` and every prediction.

    ``probabilities`` and ``labels`` are (n_images, n_findings) aligned with
    ``image_ids`` and ``finding_ids``; everything is written in the session's
    transaction, so a failure stores nothing.  Returns the evaluation's id.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    labels = np.asarray(labels, dtype=float)
    if probabilities.shape != labels.shape or probabilities.shape != (len(image_ids), len(finding_ids)):
        raise ValueError(
            f"probabilities {probabilities.shape}, labels {labels.shape}, {len(image_ids)} images and "
            f"{len(finding_ids)} findings do not line up"
        )
    session.add(evaluation)
    session.flush()
    session.add_all([
        EvaluationMetric(evaluation_id=evaluation.id,
                         **{k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in m.items()})
        for m in metrics
    ])
    insert_predictions(session, evaluation.id, image_ids, finding_ids, probabilities, labels)
    return evaluation.id


@dataclass
class EvalArrays:
    """An evaluation's predictions as arrays: rows = images (sorted by id), columns = findings."""

    evaluation_id: int
    image_ids: np.ndarray
    image_keys: list[str]
    findings: list[str]
    y_true: np.ndarray  # float, NaN = excluded for that finding
    scores: np.ndarray  # float, NaN = no prediction


def load_evaluation_arrays(session, evaluation_id: int) -> EvalArrays:
    """The stored predictions of one evaluation, aligned as (n_images, n_findings) arrays."""
    get_evaluation(session, evaluation_id)
    rows = session.execute(
        select(
            Prediction.image_id, Prediction.finding_id, Prediction.probability, Prediction.label
        ).where(Prediction.evaluation_id == evaluation_id)
    ).all()
    if not rows:
        return EvalArrays(evaluation_id, np.empty(0, np.int64), [], [], np.empty((0, 0)), np.empty((0, 0)))
    img = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    fid = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
    prob = np.fromiter((r[2] for r in rows), dtype=float, count=len(rows))
    lab = np.fromiter((np.nan if r[3] is None else r[3] for r in rows), dtype=float, count=len(rows))
    image_ids, ri = np.unique(img, return_inverse=True)
    finding_rows = session.execute(
        select(Finding.id, Finding.canonical, Finding.position)
        .where(Finding.id.in_(np.unique(fid).tolist()))
        .order_by(Finding.position, Finding.id)
    ).all()
    col = {f[0]: j for j, f in enumerate(finding_rows)}
    ci = np.array([col[f] for f in fid.tolist()])
    y = np.full((image_ids.size, len(finding_rows)), np.nan)
    s = np.full_like(y, np.nan)
    y[ri, ci] = lab
    s[ri, ci] = prob
    keys = dict(session.execute(select(Image.id, Image.key).where(Image.id.in_(image_ids.tolist()))).all())
    return EvalArrays(
        evaluation_id, image_ids, [keys[i] for i in image_ids.tolist()],
        [f[1] for f in finding_rows], y, s,
    )
