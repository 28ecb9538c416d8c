"""Storing an evaluation: vitmed's store_evaluation vs the Core insert and the ORM per row.

    python benchmarks/predict_insert.py [--images 30000] [--findings 14]

Target: 30,000 images x 14 findings stored in under 5 s on SQLite (one
transaction, including the commit).  ``store_evaluation`` (used by predict and
evals import) writes the evaluation, its metrics and every prediction as one
driver-level executemany of tuples.  Baselines, in the same run: SQLAlchemy
Core ``session.execute(insert(Prediction), [dict, ...])`` (what evals import used
before) on all rows, and ``session.add(Prediction(...))`` per row, timed on a
subset and extrapolated.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from vitmed_cli.evaluations.store import store_evaluation
from vitmed_cli.registry.db import open_registry
from vitmed_cli.registry.models import (
    Dataset,
    Evaluation,
    Finding,
    Image,
    Prediction,
    Split,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=30_000)
    ap.add_argument("--findings", type=int, default=14)
    ap.add_argument("--baseline-images", type=int, default=1_500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reg = open_registry(f"sqlite:///{Path(tmp) / 'bench.db'}")
        with reg.session() as s:
            ds = Dataset(name="bench", format="synthetic", source_path=tmp, image_size=224)
            s.add(ds)
            s.flush()
            s.add_all([Finding(dataset_id=ds.id, canonical=f"F{j}", native=f"F{j}", position=j)
                       for j in range(args.findings)])
            sp = Split(dataset_id=ds.id, name="s", method="random")
            s.add(sp)
            s.flush()
            s.execute(insert(Image), [
                {"dataset_id": ds.id, "key": f"k{i}", "source_path": f"{i}.png", "view": "frontal",
                 "cache_index": i} for i in range(args.images)])
            evs = [Evaluation(name=n, source="predict", dataset_id=ds.id, split_id=sp.id, part="test")
                   for n in ("core", "orm")]
            s.add_all(evs)
            s.flush()
            ds_id, sp_id, ev_core, ev_orm = ds.id, sp.id, evs[0].id, evs[1].id
            finding_ids = [f.id for f in ds.findings]
            image_ids = np.array(sorted(s.scalars(Image.__table__.select().with_only_columns(Image.id))))
        rng = np.random.default_rng(0)
        n, k = len(image_ids), len(finding_ids)
        probs = rng.random((n, k))
        y = (rng.random((n, k)) < 0.2).astype(np.float32)
        y[rng.random((n, k)) < 0.02] = np.nan

        metrics = [{"finding": f"F{j}", "auc": 0.5, "n_positive": 1, "n_negative": 1} for j in range(k)]
        t = time.perf_counter()
        with reg.session() as s:
            ev = Evaluation(name="bulk", source="predict", dataset_id=ds_id, split_id=sp_id, part="test")
            store_evaluation(s, ev, metrics=metrics, image_ids=image_ids, finding_ids=finding_ids,
                             probabilities=probs, labels=y)
        bulk_s = time.perf_counter() - t
        stored = n * k

        t = time.perf_counter()
        with reg.session() as s:
            rows = [{"evaluation_id": ev_core, "image_id": int(image_ids[i]), "finding_id": finding_ids[j],
                     "probability": float(probs[i, j]), "label": None if y[i, j] != y[i, j] else int(y[i, j])}
                    for i in range(n) for j in range(k)]
            for start in range(0, len(rows), 50_000):
                s.execute(insert(Prediction), rows[start:start + 50_000])
        core_s = time.perf_counter() - t

        m = min(args.baseline_images, n)
        t = time.perf_counter()
        with reg.session() as s:
            for i in range(m):
                for j in range(k):
                    lab = y[i, j]
                    s.add(Prediction(evaluation_id=ev_orm, image_id=int(image_ids[i]),
                                     finding_id=finding_ids[j], probability=float(probs[i, j]),
                                     label=None if lab != lab else int(lab)))
        orm_rows_s = (m * k) / (time.perf_counter() - t)
        reg.dispose()
    orm_s = stored / orm_rows_s
    print(f"{n} images x {k} findings = {stored} predictions, SQLite, one transaction")
    print(f"vitmed store_evaluation        : {bulk_s:7.2f} s ({stored / bulk_s:,.0f} rows/s)")
    print(f"baseline Core insert(dicts)    : {core_s:7.2f} s ({stored / core_s:,.0f} rows/s)")
    print(f"baseline ORM add per row       : {orm_s:7.2f} s extrapolated from {m * k} rows "
          f"({orm_rows_s:,.0f} rows/s)")
    print(f"ratio vs Core insert           : {core_s / bulk_s:7.1f}x")
    print(f"ratio vs ORM per row           : {orm_s / bulk_s:7.1f}x")
    print(f"target < 5 s                   : {'met' if bulk_s < 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
