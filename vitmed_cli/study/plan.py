"""A study file expanded into cells, in dependency order, each with the hash of what it computes.

Cells (``stage``): ``ingest`` and ``split`` per dataset, ``register`` per initialisation
made from a file or by a stage, ``finetune`` per stage init and per dataset x init x seed,
``predict`` per fine-tuning, ``compare`` per dataset x compared init, and one ``report``.
A cell's hash covers everything it depends on, so editing the file re-plans exactly the
cells it changes; a fine-tuning's hash is stored with its run (``Run.config_hash``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .spec import StudySpec, config_hash

# run settings that do not change what a run computes
RUNTIME_FIELDS = ("device", "num_workers", "compile", "keep_resume")
STAGES = ("ingest", "split", "register", "finetune", "predict", "compare", "report")
LIGHT_STAGES = ("ingest", "split", "register", "compare", "report")


@dataclass
class Cell:
    key: str
    stage: str
    kind: str  # dataset, split, init, init-stage, target, comparison, report
    dataset: str | None = None
    init: str | None = None
    seed: int | None = None
    deps: list[str] = field(default_factory=list)
    hash: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train_payload(cfg) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for k in RUNTIME_FIELDS:
        d.pop(k, None)
    return d


def finetune_key(dataset: str, init: str, seed: int) -> str:
    return f"finetune/{dataset}/{init}/{seed}"


def predict_key(dataset: str, init: str, seed: int) -> str:
    return f"predict/{dataset}/{init}/{seed}"


def target_inits(spec: StudySpec, dataset: str) -> list[str]:
    """The inits fine-tuned on ``dataset``: those it names, or all but a stage trained on it."""
    ds = spec.datasets[dataset]
    if ds.inits is not None:
        return list(ds.inits)
    return [i for i, e in spec.inits.items() if not (e.stage and e.stage.dataset == dataset)]


def build_plan(spec: StudySpec) -> list[Cell]:
    """Every cell of the study, each after the cells it depends on."""
    cells: list[Cell] = []
    by_key: dict[str, Cell] = {}

    def add(cell: Cell) -> Cell:
        cells.append(cell)
        by_key[cell.key] = cell
        return cell

    split_hash: dict[str, str] = {}
    for d in spec.datasets.values():
        ing = add(Cell(f"ingest/{d.name}", "ingest", "dataset", dataset=d.name,
                       hash=config_hash({"name": d.name, "format": d.format, "path": d.path,
                                         "image_size": d.image_size, "ingest": d.ingest})))
        sp = add(Cell(f"split/{d.name}", "split", "split", dataset=d.name, deps=[ing.key],
                      hash=config_hash({"ingest": ing.hash, "split": d.split.to_dict()})))
        split_hash[d.name] = sp.hash

    init_hash: dict[str, str] = {}
    init_dep: dict[str, list[str]] = {}

    def resolve_init(name: str, seen: tuple[str, ...] = ()) -> None:
        if name in init_hash:
            return
        e = spec.inits[name]
        if name in seen:
            from .spec import StudyFileError

            raise StudyFileError(f"`inits.{name}.stage.from` makes a cycle ({' -> '.join(seen + (name,))}) - "
                                 "a stage must start from an init made before it")
        if e.stage is None and e.pretrain is None:
            init_hash[name], init_dep[name] = config_hash({"registered": name}), []
            return
        if e.pretrain is not None:
            reg = add(Cell(f"register/{name}", "register", "init", init=name,
                           hash=config_hash({"pretrain": e.pretrain, "file": e.file, "dir": e.dir,
                                             "arch": e.arch, "name": name}),
                           params={"pretrain": e.pretrain, "file": e.file, "dir": e.dir, "arch": e.arch}))
            init_hash[name], init_dep[name] = reg.hash, [reg.key]
            return
        st = e.stage
        resolve_init(st.from_init, seen + (name,))
        cfg = spec.train_config(st.dataset, st.from_init, st.seed, extra=st.protocol)
        h = config_hash({"train": train_payload(cfg), "split": split_hash[st.dataset],
                         "init": init_hash[st.from_init]})
        ft = add(Cell(f"finetune/{name}", "finetune", "init-stage", dataset=st.dataset, init=st.from_init,
                      seed=st.seed, deps=[f"split/{st.dataset}", *init_dep[st.from_init]], hash=h,
                      params={"train": dataclasses.asdict(cfg), "for_init": name}))
        reg = add(Cell(f"register/{name}", "register", "init", init=name, deps=[ft.key],
                       hash=config_hash({"stage": ft.hash, "name": name}), params={"stage_cell": ft.key}))
        init_hash[name], init_dep[name] = reg.hash, [reg.key]

    for name in spec.inits:
        resolve_init(name)

    first_with_hash = {c.hash: c.key for c in cells if c.stage == "finetune"}
    predicts: dict[tuple[str, str], list[Cell]] = {}
    for d in spec.datasets.values():
        if not d.target:
            continue
        for init in target_inits(spec, d.name):
            for seed in spec.seeds:
                cfg = spec.train_config(d.name, init, seed)
                h = config_hash({"train": train_payload(cfg), "split": split_hash[d.name],
                                 "init": init_hash[init]})
                deps = [f"split/{d.name}", *init_dep[init]]
                if h in first_with_hash:  # the same training as a stage's: wait for it, train once
                    deps.append(first_with_hash[h])
                ft = add(Cell(finetune_key(d.name, init, seed), "finetune", "target", dataset=d.name, init=init,
                              seed=seed, deps=deps, hash=h, params={"train": dataclasses.asdict(cfg)}))
                first_with_hash.setdefault(h, ft.key)
                pr = add(Cell(predict_key(d.name, init, seed), "predict", "target", dataset=d.name, init=init,
                              seed=seed, deps=[ft.key], hash=config_hash({"run": h, "part": "test"}),
                              params={"part": "test"}))
                predicts.setdefault((d.name, init), []).append(pr)

    compares: list[Cell] = []
    stats = dataclasses.asdict(spec.statistics)
    for comp in spec.comparisons:
        for d in spec.datasets.values():
            if not d.target or (comp.datasets is not None and d.name not in comp.datasets):
                continue
            ref = predicts.get((d.name, comp.reference))
            for init in comp.inits:
                mine = predicts.get((d.name, init))
                if not ref or not mine:
                    continue  # one of the two is not fine-tuned on this dataset
                key = f"compare/{d.name}/{init}-vs-{comp.reference}"
                if key in by_key:
                    continue
                compares.append(add(Cell(
                    key, "compare", "comparison", dataset=d.name, init=init,
                    deps=[c.key for c in mine + ref],
                    hash=config_hash({"a": [c.hash for c in mine], "b": [c.hash for c in ref], "stats": stats}),
                    params={"reference": comp.reference})))
    all_predicts = [c for cs in predicts.values() for c in cs]
    add(Cell("report", "report", "report", deps=[c.key for c in compares + all_predicts],
             hash=config_hash({"compare": [c.hash for c in compares],
                               "predict": [c.hash for c in all_predicts],
                               "report": dataclasses.asdict(spec.report), "fdr": spec.statistics.fdr_family})))
    return cells


__all__ = ["Cell", "LIGHT_STAGES", "RUNTIME_FIELDS", "STAGES", "build_plan", "finetune_key", "predict_key",
           "target_inits", "train_payload"]
