"""Which stored evaluations a comparison pairs: by id, run or initialisation (latest per seed)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

from sqlalchemy import select

from ..errors import InputError, NotFound, RefusedError
from ..registry.models import Evaluation
from ..registry.queries import get_dataset, get_evaluation, get_run, run_tune

# --------------------------------------------------------------------------- choosing evaluations


@dataclass
class _Pick:
    evaluation_id: int
    label: str
    seed: int | None = None
    tune: str | None = None  # what the run trained (all, head, last:N); None: imported


def _tuned(label: str, tune: str | None) -> str:
    """A model's label, naming its tuning when it is not the study's full fine-tuning."""
    return label if tune in (None, "all") else f"{label} [{tune}]"


def _latest_eval(session, *, dataset_id: int | None, part: str, run_id: int | None = None,
                 init: str | None = None) -> Evaluation | None:
    q = select(Evaluation).where(Evaluation.part == part)
    if dataset_id is not None:
        q = q.where(Evaluation.dataset_id == dataset_id)
    if run_id is not None:
        q = q.where(Evaluation.run_id == run_id)
    if init is not None:
        q = q.where(Evaluation.init_name == init)
    return session.scalar(q.order_by(Evaluation.created_at.desc(), Evaluation.id.desc()))


def _picks_for_init(session, dataset, init: str, part: str, all_seeds: bool) -> list[_Pick]:
    """Evaluations of models started from ``init`` (a run's init name: dinov2, run:7, ...)."""
    if not all_seeds:
        ev = _latest_eval(session, dataset_id=dataset.id, part=part, init=init)
        if ev is None:
            known = sorted(
                {n for n in session.scalars(
                    select(Evaluation.init_name).where(
                        Evaluation.dataset_id == dataset.id, Evaluation.part == part
                    )
                ) if n}
            )
            hint = f"evaluated here: {', '.join(known)}" if known else "none yet"
            raise NotFound(
                f"no evaluation of init {init!r} on the {part} part of {dataset.name!r} ({hint}) - "
                "run vitmed predict or vitmed evals import first"
            )
        tune = run_tune(ev.run)
        return [_Pick(ev.id, _tuned(init, tune), tune=tune)]
    evs = session.scalars(
        select(Evaluation)
        .where(Evaluation.dataset_id == dataset.id, Evaluation.part == part, Evaluation.init_name == init)
        .order_by(Evaluation.created_at.desc(), Evaluation.id.desc())
    ).all()
    if not evs:
        raise NotFound(
            f"no evaluation of init {init!r} on the {part} part of {dataset.name!r} - "
            "run vitmed predict or vitmed evals import first"
        )
    by_seed: dict[int | None, Evaluation] = {}
    for ev in evs:  # newest first: keep the latest evaluation per seed
        seed = ev.run.seed if ev.run is not None else None
        by_seed.setdefault(seed, ev)
    seeded = {s: e for s, e in by_seed.items() if s is not None}
    if not seeded:
        ev = by_seed[None]
        return [_Pick(ev.id, _tuned(init, run_tune(ev.run)), tune=run_tune(ev.run))]
    return [_Pick(e.id, _tuned(f"{init} (seed {s})", run_tune(e.run)), s, run_tune(e.run))
            for s, e in sorted(seeded.items())]


def _choose(session, *, dataset: str | None, inits: Sequence[str], evals: Sequence[int],
            runs: Sequence[int], part: str, all_seeds: bool) -> tuple[list[tuple[_Pick, _Pick]], int]:
    """Pairs of evaluations to compare, and the dataset id."""
    if inits and (evals or runs):
        raise InputError(
            "choose the models by `init` NAME (with `dataset`), or by `run` ID / `eval` ID "
            "(these two can be mixed), not both"
        )
    if len(inits) + len(evals) + len(runs) < 2:
        raise InputError("compare needs two or more models - repeat `init`, `eval` or `run`")
    picks: list[list[_Pick]] = []
    if evals or runs:
        # runs first, then evaluations: --run 3 --eval 7 compares run 3 (A) with evaluation 7 (B)
        for rid in runs:
            run = get_run(session, rid)
            ds_id = get_dataset(session, dataset).id if dataset else run.dataset_id
            ev = _latest_eval(session, dataset_id=ds_id, part=part, run_id=rid)
            if ev is None:
                raise NotFound(
                    f"run {rid} has no evaluation on the {part} part - run: vitmed predict --run {rid}"
                )
            tune = run_tune(run)
            picks.append([_Pick(ev.id, _tuned(f"run {rid} ({run.init_name})", tune), run.seed, tune)])
        for eid in evals:
            ev = get_evaluation(session, eid)
            tune = run_tune(ev.run)
            picks.append([_Pick(ev.id, _tuned(f"eval {ev.id} ({ev.init_name or ev.name})", tune), tune=tune)])
    else:
        if dataset is None:
            raise InputError("`init` needs `dataset` NAME (e.g. vitmed compare --dataset vindr --init dinov2 --init imagenet)")
        ds = get_dataset(session, dataset)
        picks = [_picks_for_init(session, ds, init, part, all_seeds) for init in inits]
    if len(picks) < 2:
        raise InputError("compare needs two or more models - repeat `init`, `eval` or `run`")
    ids = [p.evaluation_id for group in picks for p in group]
    if len(set(ids)) != len(ids):
        raise InputError(
            f"the same evaluation was chosen twice (ids {', '.join(map(str, ids))}) - pick different models"
        )
    datasets = {session.get(Evaluation, i).dataset_id for i in ids}
    if len(datasets) > 1:
        raise InputError(
            f"evaluations {', '.join(map(str, ids))} are on different datasets - compare evaluations of one dataset"
        )
    pairs: list[tuple[_Pick, _Pick]] = []
    for ga, gb in itertools.combinations(picks, 2):
        if len(ga) == 1 or len(gb) == 1:
            pairs += [(a, b) for a in ga for b in gb]  # a single model meets every seed of the other
            continue
        seeds_b = {p.seed: p for p in gb}
        matched = [(a, seeds_b[a.seed]) for a in ga if a.seed in seeds_b]
        if not matched:
            raise InputError(
                f"{ga[0].label.split(' (')[0]} and {gb[0].label.split(' (')[0]} share no seed "
                f"(seeds {sorted(p.seed for p in ga)} vs {sorted(p.seed for p in gb)}) - "
                "drop `all_seeds` or train matching seeds"
            )
        pairs += matched
    return pairs, datasets.pop()


_TUNE_WORDS = {"all": "a full fine-tune", "head": "a linear probe"}


def refuse_mixed_tuning(pairs: Sequence[tuple[_Pick, _Pick]]) -> None:
    """A probe against a full fine-tune (or any two tunings) measures the tuning, not the init."""
    for a, b in pairs:
        if a.tune is not None and b.tune is not None and a.tune != b.tune:
            def what(p: _Pick) -> str:
                return _TUNE_WORDS.get(p.tune, f"a partial fine-tune (last {p.tune.split(':')[-1]} blocks)")

            raise RefusedError(
                f"{a.label} is {what(a)} (tune {a.tune}) and {b.label} {what(b)} (tune {b.tune}) - "
                "the difference would mix the initialisations with how they were trained; compare runs "
                "of one tuning mode, or pass `allow_mixed_tuning`"
            )
