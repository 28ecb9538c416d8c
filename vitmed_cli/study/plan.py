"""A study file expanded into cells, in dependency order, each with the hash of what it computes.

Cells (``stage``): ``ingest`` and ``split`` per dataset, ``register`` per initialisation
made from a file or by a stage, ``finetune`` per stage init and per dataset x init x seed,
``predict`` per fine-tuning, ``compare`` per dataset x compared init, and one ``report``.
A dataset with several ``image_sizes`` has one more ``ingest`` cell per further size
(``ingest/NAME@SIZE``, a cache at that size), still one split, and its fine-tunings,
predictions and comparisons once per size, keyed ``...@SIZE``.
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
    image_size: int | None = None  # the size of a cell of a dataset swept over several sizes
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


def _at(size: int | None) -> str:
    return f"@{size}" if size is not None else ""


def finetune_key(dataset: str, init: str, seed: int, size: int | None = None) -> str:
    return f"finetune/{dataset}/{init}/{seed}{_at(size)}"


def predict_key(dataset: str, init: str, seed: int, size: int | None = None) -> str:
    return f"predict/{dataset}/{init}/{seed}{_at(size)}"


def compare_key(dataset: str, init: str, reference: str, size: int | None = None) -> str:
    return f"compare/{dataset}/{init}-vs-{reference}{_at(size)}"


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
    size_deps: dict[tuple[str, int | None], list[str]] = {}  # the ingest a size's fine-tuning waits for
    for d in spec.datasets.values():
        ing = add(Cell(f"ingest/{d.name}", "ingest", "dataset", dataset=d.name,
                       hash=config_hash({"name": d.name, "format": d.format, "path": d.path,
                                         "image_size": d.image_size, "ingest": d.ingest}),
                       params={"image_size": d.image_size}))
        for size in d.image_sizes[1:]:  # a cache at each further size, added to the same dataset
            more = add(Cell(f"ingest/{d.name}@{size}", "ingest", "dataset", dataset=d.name, image_size=size,
                            deps=[ing.key], hash=config_hash({"ingest": ing.hash, "image_size": size}),
                            params={"image_size": size}))
            size_deps[(d.name, size)] = [more.key]
        sp = add(Cell(f"split/{d.name}", "split", "split", dataset=d.name, deps=[ing.key],
                      hash=config_hash({"ingest": ing.hash, "split": d.split.to_dict()})))
        split_hash[d.name] = sp.hash

    init_hash: dict[str, str] = {}
    init_dep: dict[str, list[str]] = {}

    def sized_config(dataset: str, init: str, seed: int, size: int | None, protocol: dict[str, Any] | None = None):
        """The fine-tuning's TrainConfig at ``size``.  The size is written into it only where the
        configuration would not already train at that size (a run without ``image_size`` trains at
        the dataset's first size), so adding sizes to a dataset keeps the hashes - and the done
        runs - of the size it already had."""
        base = spec.train_config(dataset, init, seed, extra=protocol)
        if size is None or (base.image_size or spec.datasets[dataset].image_size) == size:
            return base
        return spec.train_config(dataset, init, seed, extra={"image_size": size, **(protocol or {})})

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
        sizes = spec.datasets[st.dataset].sweep_sizes
        # a stage on a dataset swept over sizes trains at its first size (unless its protocol says)
        first = None if "image_size" in st.protocol else sizes[0]
        cfg = sized_config(st.dataset, st.from_init, st.seed, first, st.protocol)
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
    predicts: dict[tuple[str, str, int | None], list[Cell]] = {}
    for d in spec.datasets.values():
        if not d.target:
            continue
        for size in d.sweep_sizes:
            for init in target_inits(spec, d.name):
                for seed in spec.seeds:
                    cfg = sized_config(d.name, init, seed, size)
                    h = config_hash({"train": train_payload(cfg), "split": split_hash[d.name],
                                     "init": init_hash[init]})
                    deps = [f"split/{d.name}", *size_deps.get((d.name, size), []), *init_dep[init]]
                    if h in first_with_hash:  # the same training as a stage's: wait for it, train once
                        deps.append(first_with_hash[h])
                    ft = add(Cell(finetune_key(d.name, init, seed, size), "finetune", "target", dataset=d.name,
                                  init=init, seed=seed, image_size=size, deps=deps, hash=h,
                                  params={"train": dataclasses.asdict(cfg)}))
                    first_with_hash.setdefault(h, ft.key)
                    pr = add(Cell(predict_key(d.name, init, seed, size), "predict", "target", dataset=d.name,
                                  init=init, seed=seed, image_size=size, deps=[ft.key],
                                  hash=config_hash({"run": h, "part": "test"}), params={"part": "test"}))
                    predicts.setdefault((d.name, init, size), []).append(pr)

    compares: list[Cell] = []
    stats = dataclasses.asdict(spec.statistics)
    for comp in spec.comparisons:
        for d in spec.datasets.values():
            if not d.target or (comp.datasets is not None and d.name not in comp.datasets):
                continue
            for size in d.sweep_sizes:  # runs at two sizes are never paired
                ref = predicts.get((d.name, comp.reference, size))
                for init in comp.inits:
                    mine = predicts.get((d.name, init, size))
                    if not ref or not mine:
                        continue  # one of the two is not fine-tuned on this dataset
                    key = compare_key(d.name, init, comp.reference, size)
                    if key in by_key:
                        continue
                    compares.append(add(Cell(
                        key, "compare", "comparison", dataset=d.name, init=init, image_size=size,
                        deps=[c.key for c in mine + ref],
                        hash=config_hash({"a": [c.hash for c in mine], "b": [c.hash for c in ref],
                                          "stats": stats}),
                        params={"reference": comp.reference, "a": [c.key for c in mine],
                                "b": [c.key for c in ref]})))
    all_predicts = [c for cs in predicts.values() for c in cs]
    add(Cell("report", "report", "report", deps=[c.key for c in compares + all_predicts],
             hash=config_hash({"compare": [c.hash for c in compares],
                               "predict": [c.hash for c in all_predicts],
                               "report": dataclasses.asdict(spec.report), "fdr": spec.statistics.fdr_family})))
    return cells


def _init_model(spec: StudySpec, name: str) -> tuple[str, dict[str, Any]] | None:
    """The architecture and model options an init's file brings, when the study file tells them;
    None for a name only the registry knows (fine-tuning checks those when it starts)."""
    from ..weights.inits import DEFAULT_ARCH, TIMM_PREFIX

    e = spec.inits[name]
    if e.stage is not None:
        base = _init_model(spec, e.stage.from_init)
        cfg = spec.train_config(e.stage.dataset, e.stage.from_init, e.stage.seed, extra=e.stage.protocol)
        if base is None:
            return None
        return cfg.arch or base[0], {**base[1], **cfg.model_kwargs}  # the stage run's own model
    if e.pretrain is None:  # a registered name: only random is known without the registry
        return (DEFAULT_ARCH[name], {}) if name == "random" else None
    if e.pretrain in DEFAULT_ARCH or e.pretrain == "file":
        arch = e.arch or DEFAULT_ARCH.get(e.pretrain)
        return (arch, {}) if arch else None
    if e.pretrain.startswith(TIMM_PREFIX):
        return e.arch or e.pretrain[len(TIMM_PREFIX):], {}
    return None  # dinov3, hf: the architecture is read from the file


def check_image_sizes(spec: StudySpec, plan: list[Cell] | None = None) -> None:
    """Refuse a fine-tuning at a size its ViT's patch does not divide, naming the dataset, the size
    and the nearest sizes that fit (:func:`vitmed_cli.models.check_image_size`, as finetune does)."""
    from ..errors import ConfigError, VitmedError
    from ..models import check_image_size
    from .spec import StudyFileError

    checked: set[str] = set()
    for cell in plan if plan is not None else build_plan(spec):
        if cell.stage != "finetune":
            continue
        train = cell.params["train"]
        d = spec.datasets[cell.dataset]
        model = _init_model(spec, cell.init)
        if model is None:  # its file's model options may change the patch: fine-tuning checks it
            continue
        arch = train.get("arch") or model[0]
        kwargs = {**model[1], **(train.get("model_kwargs") or {})}
        size = train.get("image_size") or d.image_size
        once = config_hash({"arch": arch, "kwargs": kwargs, "size": size})
        if once in checked:
            continue
        checked.add(once)
        try:
            check_image_size(arch, size, **kwargs)
        except VitmedError as exc:
            if not (isinstance(exc, ConfigError) and str(exc).startswith("`image_size`")):
                continue  # another problem of the model: fine-tuning names it when it starts
            key = (f"datasets.{d.name}.image_sizes" if len(d.image_sizes) > 1
                   else f"datasets.{d.name}.image_size" if train.get("image_size") is None else "protocol.image_size")
            message = str(exc).replace("`image_size`", f"`{key}`", 1)
            raise StudyFileError(f"{message} (fine-tuning {d.name} from {cell.init})") from None


__all__ = ["Cell", "LIGHT_STAGES", "RUNTIME_FIELDS", "STAGES", "build_plan", "check_image_sizes", "compare_key", "finetune_key",
           "predict_key", "target_inits", "train_payload"]
