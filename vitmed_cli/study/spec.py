"""The study file: TOML read with the standard library, checked key by key.

A study file declares the whole matrix of the paper (datasets x initialisations x seeds)
and how to run and report it.  :func:`load_study` reads and checks it into a
:class:`StudySpec`; every error names the key path (```protocol.lr```) and the fix.

Sections::

    [study]        name, seeds, description
    [protocol]     training options: any field of TrainConfig (lr, weight_decay, rotation, ...)
    [datasets.N]   format, path, image_size or image_sizes = [...], ingest = {...}, split = {...},
                   findings = [...], findings_by_init = {INIT = [...]}, inits = [...], target,
                   protocol = {...}
    [inits.N]      nothing (a built-in or already registered name), pretrain = KIND with
                   file/dir/arch (registered through pretrain-load), or stage = {dataset, from,
                   seed, protocol} (fine-tuned in this study, its best checkpoint registered as N)
    [[comparisons]] reference, inits, datasets
    [statistics]   resamples, alpha, fdr_family (study | dataset), seed
    [report]       out, format (html | md)
    [executor.slurm] gpus, partition, time, account, cpus, mem_gb

A dataset's ``image_sizes = [224, 512]`` (instead of ``image_size``) sweeps resolutions: the
dataset is ingested once per size (the first size creates it, each other size adds a cache at
that size to the same dataset), split once, and fine-tuned, scored and compared at each size
(cell keys end in ``@SIZE``; runs at two sizes are never paired).  A list of one size is the
same study as ``image_size``.  A stage init trained on such a dataset uses its first size.

One module on purpose (about 520 lines): the study file's whole schema and its checks, so
every key and its error message live side by side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..choices import DEFAULT_ALPHA, DEFAULT_RESAMPLES, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, Format
from ..errors import ConfigError
from ..training.config import TrainConfig

DEFAULT_IMAGE_SIZE = 224
SPLIT_POLICIES = ("random", "official")
FDR_FAMILIES = ("study", "dataset")
REPORT_FORMATS = ("html", "md")
# set by the study for each cell, not by the protocol table
CELL_FIELDS = {"dataset": "the [datasets] tables", "init": "the [inits] tables", "split": "datasets.NAME.split",
               "seed": "study.seeds", "findings": "datasets.NAME.findings"}


class StudyFileError(ConfigError):
    """A study file that cannot be run as written."""


@dataclass(frozen=True)
class SplitSpec:
    policy: str = "random"
    name: str = "study"
    val: float = 0.1
    test: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    format: str
    path: str
    image_size: int  # the first of image_sizes: the size the dataset is created at
    ingest: dict[str, Any]
    split: SplitSpec
    findings: list[str] | None
    findings_by_init: dict[str, list[str]]
    inits: list[str] | None  # None: every init of the study (an in-domain stage not on its own data)
    target: bool
    protocol: dict[str, Any]
    image_sizes: list[int] = field(default_factory=list)  # every size swept; [image_size] for one

    @property
    def sweep_sizes(self) -> list[int | None]:
        """The sizes its cells are planned at; [None] for one size (cells keyed and hashed as ever)."""
        return list(self.image_sizes) if len(self.image_sizes) > 1 else [None]


@dataclass(frozen=True)
class StageSpec:
    dataset: str
    from_init: str
    seed: int
    protocol: dict[str, Any]


@dataclass(frozen=True)
class InitEntry:
    name: str
    pretrain: str | None = None  # pretrain-load KIND (dinov2, imagenet, dinov3, hf, timm:NAME, file)
    file: str | None = None
    dir: str | None = None
    arch: str | None = None
    stage: StageSpec | None = None
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "stage" if self.stage else "file" if self.pretrain else "registered"


@dataclass(frozen=True)
class ComparisonSpec:
    reference: str
    inits: list[str]
    datasets: list[str] | None


@dataclass(frozen=True)
class StatisticsSpec:
    resamples: int = DEFAULT_RESAMPLES
    alpha: float = DEFAULT_ALPHA
    fdr_family: str = "study"
    seed: int = 0


@dataclass(frozen=True)
class ReportSpec:
    out: str
    format: str = "html"


@dataclass(frozen=True)
class SlurmSection:
    gpus: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    cpus: int | None = None
    mem_gb: float | None = None


@dataclass(frozen=True)
class StudySpec:
    name: str
    file: str  # the file's path
    text: str  # its text, stored with the study
    folder: str  # relative paths in the file are relative to its folder
    description: str
    seeds: list[int]
    protocol: dict[str, Any]
    datasets: dict[str, DatasetSpec]
    inits: dict[str, InitEntry]
    comparisons: list[ComparisonSpec]
    statistics: StatisticsSpec
    report: ReportSpec
    slurm: SlurmSection

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("text")
        return out

    def train_config(self, dataset: str, init: str, seed: int, *, extra: dict[str, Any] | None = None,
                     findings: list[str] | None = None, split: str | None = None) -> TrainConfig:
        """The TrainConfig of one fine-tuning: protocol, then the dataset's and the init's overrides."""
        ds = self.datasets[dataset]
        values = {**self.protocol, **ds.protocol, **self.inits[init].protocol, **(extra or {})}
        if findings is None:
            findings = ds.findings_by_init.get(init, ds.findings)
        cfg = TrainConfig(dataset=dataset, init=init, split=split or ds.split.name, seed=seed,
                          findings=list(findings) if findings is not None else None, **values)
        return cfg


# --------------------------------------------------------------------------- checking values

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a table"}


def _what(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _typed(value: Any, kind: type, where: str) -> Any:
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise StudyFileError(f"`{where}` must be {_TYPE_WORDS[kind]}, got {value!r} ({_what(value)})")
    return value


def _table(value: Any, where: str) -> dict[str, Any]:
    return _typed(value, dict, where)


def _known(table: dict[str, Any], where: str, allowed: tuple[str, ...] | list[str], fix: str = "") -> None:
    for key in table:
        if key not in allowed:
            if not where:
                raise StudyFileError(f"[{key}] is not a study file table - use one of: "
                                     f"{', '.join('[' + a + ']' for a in allowed)}")
            raise StudyFileError(
                f"`{where}.{key}` is not a study file key - use one of: {', '.join(allowed)}{fix}"
            )


def _str_list(value: Any, where: str) -> list[str]:
    items = _typed(value, list, where)
    for i, item in enumerate(items):
        _typed(item, str, f"{where}[{i}]")
    return list(items)


def _train_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _protocol(table: Any, where: str) -> dict[str, Any]:
    """A protocol table: TrainConfig fields only, with the type of their default."""
    table = _table(table, where)
    fields = _train_fields()
    allowed = sorted(n for n in fields if n not in CELL_FIELDS)
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in CELL_FIELDS:
            raise StudyFileError(f"`{where}.{key}` is set by the study for each cell - use {CELL_FIELDS[key]}")
        if key not in fields:
            raise StudyFileError(
                f"`{where}.{key}` is not a training option - use one of: {', '.join(allowed)}"
            )
        default = fields[key].default
        if default is dataclasses.MISSING and fields[key].default_factory is not dataclasses.MISSING:
            default = fields[key].default_factory()
        if isinstance(default, bool):
            value = _typed(value, bool, f"{where}.{key}")
        elif isinstance(default, int):
            value = _typed(value, int, f"{where}.{key}")
        elif isinstance(default, float):
            value = _typed(value, float, f"{where}.{key}")
        elif isinstance(default, str):
            value = _typed(value, str, f"{where}.{key}")
        elif isinstance(default, dict):
            value = _table(value, f"{where}.{key}")
        elif isinstance(default, list):
            value = _typed(value, list, f"{where}.{key}")
        out[key] = value
    return out


def _resolve(folder: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (folder / p).resolve())


# --------------------------------------------------------------------------- sections

def _split(value: Any, where: str) -> SplitSpec:
    t = _table(value, where)
    _known(t, where, ("policy", "name", "val", "test", "seed"))
    policy = _typed(t.get("policy", "random"), str, f"{where}.policy")
    if policy not in SPLIT_POLICIES:
        raise StudyFileError(f"`{where}.policy` must be random or official, got {policy!r}")
    val = _typed(t.get("val", 0.1), float, f"{where}.val")
    test = _typed(t.get("test", 0.2), float, f"{where}.test")
    if policy == "official" and "test" in t:
        raise StudyFileError(f"`{where}.test` does not apply to an official split (its test part is the "
                             "dataset's own) - remove it")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise StudyFileError(f"`{where}` fractions val {val} and test {test} must each lie in [0, 1) "
                             "and leave images for training")
    return SplitSpec(policy=policy, name=_typed(t.get("name", "study"), str, f"{where}.name"), val=val,
                     test=test, seed=_typed(t.get("seed", 0), int, f"{where}.seed"))


_DATASET_KEYS = ("format", "path", "image_size", "image_sizes", "ingest", "split", "findings", "findings_by_init", "inits",
                 "target", "protocol")


def _dataset(name: str, value: Any, folder: Path, check_paths: bool) -> DatasetSpec:
    where = f"datasets.{name}"
    t = _table(value, where)
    _known(t, where, _DATASET_KEYS)
    for key in ("format", "path"):
        if key not in t:
            raise StudyFileError(f"`{where}.{key}` is missing - every dataset needs a format and a path")
    fmt = _typed(t["format"], str, f"{where}.format")
    if fmt not in Format.names():
        raise StudyFileError(f"`{where}.format` {fmt!r} is not a dataset format - use one of: "
                             f"{', '.join(Format.names())}")
    path = _resolve(folder, _typed(t["path"], str, f"{where}.path"))
    if check_paths and fmt != "synthetic" and not Path(path).exists():
        raise StudyFileError(f"`{where}.path` {path} does not exist - point it at the {fmt} download "
                             "(relative paths are read from the study file's folder)")
    ingest = _table(t.get("ingest", {}), f"{where}.ingest")
    from ..datasets.formats import READERS

    allowed = sorted(READERS[fmt].options)
    for key in ingest:
        if key not in allowed:
            raise StudyFileError(f"`{where}.ingest.{key}` is not an option of the {fmt} format - use "
                                 f"{', '.join(allowed) if allowed else 'none (remove the ingest table)'}")
    for key in sorted(READERS[fmt].required - set(ingest)):
        raise StudyFileError(f"`{where}.ingest.{key}` is missing - the {fmt} format needs it")
    findings = _str_list(t["findings"], f"{where}.findings") if "findings" in t else None
    by_init = {k: _str_list(v, f"{where}.findings_by_init.{k}")
               for k, v in _table(t.get("findings_by_init", {}), f"{where}.findings_by_init").items()}
    inits = _str_list(t["inits"], f"{where}.inits") if "inits" in t else None
    sizes = _image_sizes(t, where)
    target = _typed(t.get("target", True), bool, f"{where}.target")
    if len(sizes) > 1 and not target:
        raise StudyFileError(f"`{where}.image_sizes` sweeps a dataset with target = false - a stage trains "
                             f"only at one size, so give `{where}.image_size` (the stage's size)")
    return DatasetSpec(name=name, format=fmt, path=path, image_size=sizes[0], image_sizes=sizes,
                       ingest=dict(ingest),
                       split=_split(t.get("split", {}), f"{where}.split"), findings=findings,
                       findings_by_init=by_init, inits=inits,
                       target=target,
                       protocol=_protocol(t.get("protocol", {}), f"{where}.protocol"))


def _image_sizes(t: dict[str, Any], where: str) -> list[int]:
    """A dataset's sizes: ``image_size`` (one) or ``image_sizes`` (a list of different sizes)."""
    if "image_size" in t and "image_sizes" in t:
        raise StudyFileError(f"`{where}` has both image_size and image_sizes - keep `{where}.image_sizes` "
                             f"to sweep several sizes, or `{where}.image_size` for one")
    if "image_sizes" in t:
        key = f"{where}.image_sizes"
        items = _typed(t["image_sizes"], list, key)
        if not items:
            raise StudyFileError(f"`{key}` is empty - list one or more sizes in pixels, e.g. [224, 512]")
        sizes = [_typed(x, int, f"{key}[{i}]") for i, x in enumerate(items)]
        names = [f"{key}[{i}]" for i in range(len(sizes))]
    else:
        sizes = [_typed(t.get("image_size", DEFAULT_IMAGE_SIZE), int, f"{where}.image_size")]
        names = [f"{where}.image_size"]
    for size, key in zip(sizes, names):
        if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
            raise StudyFileError(f"`{key}` must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, "
                                 f"got {size}")
    twice = sorted({x for x in sizes if sizes.count(x) > 1})
    if twice:
        raise StudyFileError(f"`{where}.image_sizes` lists {', '.join(map(str, twice))} more than once - "
                             "list each size once")
    return sizes


def _init(name: str, value: Any, folder: Path, seeds: list[int], check_paths: bool) -> InitEntry:
    where = f"inits.{name}"
    t = _table(value, where)
    _known(t, where, ("pretrain", "file", "dir", "arch", "stage", "protocol"))
    protocol = _protocol(t.get("protocol", {}), f"{where}.protocol")
    if "stage" in t:
        if "pretrain" in t or "file" in t or "dir" in t:
            raise StudyFileError(f"`{where}` has both a stage and a file to register - an init is one or "
                                 "the other")
        s = _table(t["stage"], f"{where}.stage")
        _known(s, f"{where}.stage", ("dataset", "from", "seed", "protocol"))
        for key in ("dataset", "from"):
            if key not in s:
                raise StudyFileError(f"`{where}.stage.{key}` is missing - a stage fine-tunes on `dataset` "
                                     "starting from the init `from`")
        stage = StageSpec(dataset=_typed(s["dataset"], str, f"{where}.stage.dataset"),
                          from_init=_typed(s["from"], str, f"{where}.stage.from"),
                          seed=_typed(s.get("seed", seeds[0]), int, f"{where}.stage.seed"),
                          protocol=_protocol(s.get("protocol", {}), f"{where}.stage.protocol"))
        return InitEntry(name=name, stage=stage, protocol=protocol)
    if "pretrain" not in t:
        for key in ("file", "dir", "arch"):
            if key in t:
                raise StudyFileError(f"`{where}.{key}` needs `{where}.pretrain` (dinov2, imagenet, dinov3, hf, "
                                     "timm:NAME or file) - say what kind of file it is")
        return InitEntry(name=name, protocol=protocol)
    paths = {}
    for key in ("file", "dir"):
        if key in t:
            p = _resolve(folder, _typed(t[key], str, f"{where}.{key}"))
            if check_paths and not Path(p).exists():
                raise StudyFileError(f"`{where}.{key}` {p} does not exist - download it first (see README, "
                                     "Getting the weights) or correct the path")
            paths[key] = p
    return InitEntry(name=name, pretrain=_typed(t["pretrain"], str, f"{where}.pretrain"),
                     arch=_typed(t["arch"], str, f"{where}.arch") if "arch" in t else None,
                     protocol=protocol, **paths)


def parse_study(text: str, *, file: str | Path = "study.toml", check_paths: bool = True) -> StudySpec:
    """Check a study file's text; relative paths are taken from ``file``'s folder."""
    file = Path(file).expanduser().resolve()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyFileError(f"{file} is not valid TOML ({exc}) - fix the line it names") from None
    _known(raw, "", ("study", "protocol", "datasets", "inits", "comparisons", "statistics", "report",
                     "executor"))
    folder = file.parent
    st = _table(raw.get("study", {}), "study")
    _known(st, "study", ("name", "seeds", "description"))
    if "name" not in st:
        raise StudyFileError("`study.name` is missing - name the study (vitmed report --study NAME uses it)")
    name = _typed(st["name"], str, "study.name")
    seeds = [_typed(x, int, f"study.seeds[{i}]") for i, x in enumerate(_typed(st.get("seeds", [0]), list,
                                                                                  "study.seeds"))]
    if not seeds or len(set(seeds)) != len(seeds):
        raise StudyFileError(f"`study.seeds` must list one or more different seeds, got {seeds}")
    protocol = _protocol(raw.get("protocol", {}), "protocol")
    dtab = _table(raw.get("datasets", {}), "datasets")
    if not dtab:
        raise StudyFileError("the study has no [datasets.NAME] table - declare at least one dataset")
    datasets = {n: _dataset(n, v, folder, check_paths) for n, v in dtab.items()}
    itab = _table(raw.get("inits", {}), "inits")
    if not itab:
        raise StudyFileError("the study has no [inits.NAME] table - declare at least one initialisation")
    inits = {n: _init(n, v, folder, seeds, check_paths) for n, v in itab.items()}
    for n, e in inits.items():
        if e.stage is not None:
            if e.stage.dataset not in datasets:
                raise StudyFileError(f"`inits.{n}.stage.dataset` {e.stage.dataset!r} is not a dataset of the "
                                     f"study - use one of: {', '.join(datasets)}")
            if e.stage.from_init not in inits or e.stage.from_init == n:
                raise StudyFileError(f"`inits.{n}.stage.from` {e.stage.from_init!r} is not another init of the "
                                     f"study - use one of: {', '.join(i for i in inits if i != n)}")
    for d in datasets.values():
        for i in (d.inits or []) + list(d.findings_by_init):
            if i not in inits:
                raise StudyFileError(f"init {i!r} named in `datasets.{d.name}` is not declared - add "
                                     f"[inits.{i}] or use one of: {', '.join(inits)}")
    comparisons = []
    for k, c in enumerate(_typed(raw.get("comparisons", []), list, "comparisons")):
        where = f"comparisons[{k}]"
        c = _table(c, where)
        _known(c, where, ("reference", "inits", "datasets"))
        if "reference" not in c:
            raise StudyFileError(f"`{where}.reference` is missing - name the init the others are compared with")
        ref = _typed(c["reference"], str, f"{where}.reference")
        others = _str_list(c.get("inits", [i for i in inits if i != ref]), f"{where}.inits")
        for i in [ref, *others]:
            if i not in inits:
                raise StudyFileError(f"`{where}` names init {i!r}, which the study does not declare - use "
                                     f"one of: {', '.join(inits)}")
        ds = _str_list(c["datasets"], f"{where}.datasets") if "datasets" in c else None
        for d in ds or []:
            if d not in datasets:
                raise StudyFileError(f"`{where}.datasets` names {d!r}, which the study does not declare")
        comparisons.append(ComparisonSpec(reference=ref, inits=others, datasets=ds))
    stt = _table(raw.get("statistics", {}), "statistics")
    _known(stt, "statistics", ("resamples", "alpha", "fdr_family", "seed"))
    statistics = StatisticsSpec(
        resamples=_typed(stt.get("resamples", DEFAULT_RESAMPLES), int, "statistics.resamples"),
        alpha=_typed(stt.get("alpha", DEFAULT_ALPHA), float, "statistics.alpha"),
        fdr_family=_typed(stt.get("fdr_family", "study"), str, "statistics.fdr_family"),
        seed=_typed(stt.get("seed", 0), int, "statistics.seed"))
    if statistics.fdr_family not in FDR_FAMILIES:
        raise StudyFileError(f"`statistics.fdr_family` must be study or dataset, got {statistics.fdr_family!r}")
    if statistics.resamples < 10:
        raise StudyFileError(f"`statistics.resamples` {statistics.resamples} is too few for a p-value - use "
                             "1000 or more")
    rt = _table(raw.get("report", {}), "report")
    _known(rt, "report", ("out", "format"))
    fmt = _typed(rt.get("format", "html"), str, "report.format")
    if fmt not in REPORT_FORMATS:
        raise StudyFileError(f"`report.format` must be html or md, got {fmt!r}")
    out = _resolve(folder, _typed(rt.get("out", f"{name}-report.{fmt}"), str, "report.out"))
    et = _table(raw.get("executor", {}), "executor")
    _known(et, "executor", ("slurm",))
    sl = _table(et.get("slurm", {}), "executor.slurm")
    _known(sl, "executor.slurm", ("gpus", "partition", "time", "account", "cpus", "mem_gb"))
    slurm = SlurmSection(
        gpus=_typed(sl["gpus"], int, "executor.slurm.gpus") if "gpus" in sl else None,
        cpus=_typed(sl["cpus"], int, "executor.slurm.cpus") if "cpus" in sl else None,
        mem_gb=_typed(sl["mem_gb"], float, "executor.slurm.mem_gb") if "mem_gb" in sl else None,
        **{k: _typed(sl[k], str, f"executor.slurm.{k}") for k in ("partition", "time", "account") if k in sl})
    spec = StudySpec(name=name, file=str(file), text=text, folder=str(folder),
                     description=_typed(st.get("description", ""), str, "study.description"), seeds=seeds,
                     protocol=protocol, datasets=datasets, inits=inits, comparisons=comparisons,
                     statistics=statistics, report=ReportSpec(out=out, format=fmt), slurm=slurm)
    _check_train_configs(spec)
    return spec


def _check_train_configs(spec: StudySpec) -> None:
    """Every fine-tuning's TrainConfig builds and passes its own checks, named by where it comes from."""
    from ..errors import TrainingError

    for d in spec.datasets.values():
        for i in spec.inits:
            try:
                for size in d.sweep_sizes:
                    extra = {"image_size": size} if size is not None else None
                    spec.train_config(d.name, i, spec.seeds[0], extra=extra).check()
            except TrainingError as exc:  # the training option, named as the study file's key
                message = re.sub(r"`([A-Za-z_]+)`", r"`protocol.\1`", str(exc))
                raise StudyFileError(f"{message} (fine-tuning {d.name} from {i})") from None
            except TypeError as exc:  # pragma: no cover - keys are checked against the fields above
                raise StudyFileError(f"the protocol for {d.name} from {i}: {exc}") from None


def load_study(path: str | Path, *, check_paths: bool = True) -> StudySpec:
    """Read and check the study file at ``path``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise StudyFileError(f"study file {p} not found - write one with: vitmed study init --out {p}")
    return parse_study(p.read_text(encoding="utf-8"), file=p, check_paths=check_paths)


def config_hash(payload: dict[str, Any]) -> str:
    """sha256 of a JSON payload with sorted keys: the identity of what a cell computes."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


__all__ = ["ComparisonSpec", "DatasetSpec", "InitEntry", "SplitSpec", "StageSpec", "StudyFileError",
           "StudySpec", "config_hash", "load_study", "parse_study"]
