"""The experiment registry: every ORM class vitmed stores.

One database answers "where did this number come from?": a comparison row
points at two evaluations, an evaluation at a run and a split, a run at its
dataset, split, initial checkpoint (by sha256), configuration and code version.

Conventions
-----------
* Labels: one row per image x finding that the source mentions, ``value`` is
  1 (positive), 0 (negative) or -1 (uncertain); *no row* means "not mentioned"
  (negative at training time, as in the study).
* Views: ``Image.view`` is frontal, lateral or unknown (the native code is kept in
  ``view_native``). Training and evaluation use frontal images; a dataset with no view
  information at all (every image unknown) uses its unknown images.
* Derived findings (a run's ``merge`` and ``no_finding``: e.g. PadChest nodule or mass,
  ChestX-ray14's "No Finding") have no labels: they are computed from the stored labels
  whenever a run loads them.  An evaluation that scores one needs a ``Finding`` row for its
  predictions' foreign key: that row's ``native`` is :data:`DERIVED_NATIVE`, it has no
  ``Label`` rows, and ``Dataset.findings`` (the dataset as ingested) leaves it out.
* Predictions carry the label they were scored against (``label``: 1 or 0), so
  a comparison can check that two evaluations share their ground truth.
* Deleting a dataset cascades to its images, labels and splits, but is refused
  while runs or evaluations use it; deleting a run cascades to its metrics,
  checkpoints and evaluations, but is refused while another run starts from
  one of its checkpoints.

One module on purpose (about 510 lines): the whole schema in one file, read as one, and
the ``Base.metadata`` the migrations are checked against.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    and_,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUN_STATUSES = ("running", "completed", "failed", "interrupted")
PARTS = ("train", "val", "test")
VIEWS = ("frontal", "lateral", "unknown")
CHECKPOINT_SOURCES = ("file", "hub-cache", "run", "random")
EVALUATION_SOURCES = ("predict", "import")
CELL_STATES = ("pending", "running", "done", "failed")
MACRO = "__macro__"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}

    def to_dict(self) -> dict[str, Any]:
        """The row's columns as plain JSON-ready values."""
        out: dict[str, Any] = {}
        for col in self.__table__.columns:
            value = getattr(self, col.key)
            if isinstance(value, dt.datetime):
                # stored in UTC; SQLite hands it back without its zone
                value = (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).isoformat()
            out[col.key] = value
        return out


# ``Finding.native`` of a derived finding's row (no native name: the dataset has no such column);
# derived rows sort after the dataset's own findings.
DERIVED_NATIVE = "(derived)"
DERIVED_POSITION = 1_000_000


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    format: Mapped[str] = mapped_column(String(32))
    source_path: Mapped[str] = mapped_column(Text)
    image_size: Mapped[int] = mapped_column(Integer)
    cache_path: Mapped[Optional[str]] = mapped_column(Text)
    has_patient_ids: Mapped[bool] = mapped_column(Boolean, default=True)
    label_policy: Mapped[Optional[str]] = mapped_column(String(32))
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    notes: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    # the dataset's own findings, as ingested (rows of derived findings are left out)
    findings: Mapped[list["Finding"]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", passive_deletes=True,
        order_by="Finding.position",
        primaryjoin=lambda: and_(Dataset.id == Finding.dataset_id, Finding.native != DERIVED_NATIVE),
    )
    images: Mapped[list["Image"]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", passive_deletes=True
    )
    splits: Mapped[list["Split"]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", passive_deletes=True
    )


class Finding(Base):
    """A finding of one dataset: the canonical name and the dataset's own name (a derived
    finding's row: :data:`DERIVED_NATIVE`)."""

    __tablename__ = "findings"
    __table_args__ = (UniqueConstraint("dataset_id", "canonical"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    canonical: Mapped[str] = mapped_column(String(128))
    native: Mapped[str] = mapped_column(String(256))
    position: Mapped[int] = mapped_column(Integer)

    dataset: Mapped[Dataset] = relationship(back_populates="findings")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "key"),
        Index("ix_images_dataset_patient", "dataset_id", "patient_id"),
        CheckConstraint(_in("view", VIEWS), name="view"),
        CheckConstraint(
            "official_part IS NULL OR " + _in("official_part", PARTS), name="official_part"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(512))
    patient_id: Mapped[Optional[str]] = mapped_column(String(128))
    study_id: Mapped[Optional[str]] = mapped_column(String(128))
    view: Mapped[str] = mapped_column(String(16), default="unknown")
    view_native: Mapped[Optional[str]] = mapped_column(String(64))
    sex: Mapped[Optional[str]] = mapped_column(String(16))
    age: Mapped[Optional[float]] = mapped_column(Float)
    source_path: Mapped[str] = mapped_column(Text)
    official_part: Mapped[Optional[str]] = mapped_column(String(8))
    cache_index: Mapped[Optional[int]] = mapped_column(Integer)
    readable: Mapped[Optional[bool]] = mapped_column(Boolean)
    error: Mapped[Optional[str]] = mapped_column(Text)

    dataset: Mapped[Dataset] = relationship(back_populates="images")


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (
        CheckConstraint("value IN (1, 0, -1)", name="value"),
        Index("ix_labels_finding", "finding_id"),
    )

    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    finding_id: Mapped[int] = mapped_column(
        ForeignKey("findings.id", ondelete="CASCADE"), primary_key=True
    )
    value: Mapped[int] = mapped_column(SmallInteger)


class Split(Base):
    __tablename__ = "splits"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(32))
    seed: Mapped[Optional[int]] = mapped_column(Integer)
    val_fraction: Mapped[Optional[float]] = mapped_column(Float)
    test_fraction: Mapped[Optional[float]] = mapped_column(Float)
    by: Mapped[str] = mapped_column(String(16), default="patient")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="splits")


class SplitAssignment(Base):
    __tablename__ = "split_assignments"
    __table_args__ = (
        CheckConstraint(_in("part", PARTS), name="part"),
        Index("ix_split_assignments_split_part", "split_id", "part"),
        Index("ix_split_assignments_image", "image_id"),
    )

    split_id: Mapped[int] = mapped_column(
        ForeignKey("splits.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    part: Mapped[str] = mapped_column(String(8))


class Checkpoint(Base):
    """Weights: an initialisation registered from a file or the hub cache, or a run's output."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("sha256", "arch", "role"),
        CheckConstraint(_in("source", CHECKPOINT_SOURCES), name="source"),
        Index("ix_checkpoints_init", "init"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    init: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(128))
    path: Mapped[Optional[str]] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16), default="init")
    run_id: Mapped[Optional[int]] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    epoch: Mapped[Optional[int]] = mapped_column(Integer)
    n_params: Mapped[Optional[int]] = mapped_column(BigInteger)
    image_size: Mapped[Optional[int]] = mapped_column(Integer)
    findings: Mapped[Optional[list[Any]]] = mapped_column()
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    run: Mapped[Optional["Run"]] = relationship(
        back_populates="checkpoints", foreign_keys=[run_id]
    )


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        Index("ix_runs_dataset_init", "dataset_id", "init_name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    split_id: Mapped[int] = mapped_column(ForeignKey("splits.id", ondelete="RESTRICT"))
    init_checkpoint_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="RESTRICT", use_alter=True)
    )
    init_name: Mapped[str] = mapped_column(String(64))
    init_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(128))
    image_size: Mapped[int] = mapped_column(Integer)
    findings: Mapped[list[Any]] = mapped_column(default=list)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")
    epochs_planned: Mapped[int] = mapped_column(Integer)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    best_epoch: Mapped[Optional[int]] = mapped_column(Integer)
    best_val_macro_auc: Mapped[Optional[float]] = mapped_column(Float)
    resume_path: Mapped[Optional[str]] = mapped_column(Text)
    error: Mapped[Optional[str]] = mapped_column(Text)
    host: Mapped[Optional[str]] = mapped_column(String(256))
    # The process training the run now (rank 0), and when it last said it is alive: a run
    # whose owner is gone is stale, and --resume refuses a run whose owner is alive.
    owner_host: Mapped[Optional[str]] = mapped_column(String(256))
    owner_pid: Mapped[Optional[int]] = mapped_column(Integer)
    owner_token: Mapped[Optional[str]] = mapped_column(String(64))
    heartbeat_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime(timezone=True))
    world_size: Mapped[int] = mapped_column(Integer, default=1)
    versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    code_version: Mapped[Optional[str]] = mapped_column(String(128))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime(timezone=True))
    # sha256 of everything that defines what the run trains (a study's cell configuration):
    # a study finds a run it already made by it instead of training it twice
    config_hash: Mapped[Optional[str]] = mapped_column(String(64), index=True)

    dataset: Mapped[Dataset] = relationship()
    split: Mapped[Split] = relationship()
    init_checkpoint: Mapped[Optional[Checkpoint]] = relationship(
        foreign_keys=[init_checkpoint_id]
    )
    checkpoints: Mapped[list[Checkpoint]] = relationship(
        back_populates="run", foreign_keys=[Checkpoint.run_id],
        cascade="all, delete-orphan", passive_deletes=True,
    )
    epochs: Mapped[list["EpochMetric"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True,
        order_by="EpochMetric.epoch",
    )


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("run_id", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[Optional[float]] = mapped_column(Float)
    val_loss: Mapped[Optional[float]] = mapped_column(Float)
    val_macro_auc: Mapped[Optional[float]] = mapped_column(Float)
    val_auc: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lr: Mapped[Optional[float]] = mapped_column(Float)
    seconds: Mapped[Optional[float]] = mapped_column(Float)
    images_per_second: Mapped[Optional[float]] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    run: Mapped[Run] = relationship(back_populates="epochs")


class Evaluation(Base):
    """Scores of one model on one part of one dataset split, or imported from elsewhere."""

    __tablename__ = "evaluations"
    __table_args__ = (
        CheckConstraint(_in("source", EVALUATION_SOURCES), name="source"),
        CheckConstraint(_in("part", PARTS), name="part"),
        Index("ix_evaluations_lookup", "dataset_id", "part", "init_name"),
        Index("ix_evaluations_run", "run_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))
    run_id: Mapped[Optional[int]] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    checkpoint_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL")
    )
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    split_id: Mapped[Optional[int]] = mapped_column(ForeignKey("splits.id", ondelete="RESTRICT"))
    part: Mapped[str] = mapped_column(String(8))
    init_name: Mapped[Optional[str]] = mapped_column(String(64))
    n_images: Mapped[int] = mapped_column(Integer, default=0)
    macro_auc: Mapped[Optional[float]] = mapped_column(Float)
    skipped_findings: Mapped[list[Any]] = mapped_column(default=list)
    uncertain_policy: Mapped[Optional[str]] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    run: Mapped[Optional[Run]] = relationship()
    dataset: Mapped[Dataset] = relationship()
    split: Mapped[Optional[Split]] = relationship()
    metrics: Mapped[list["EvaluationMetric"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )


class EvaluationMetric(Base):
    """Per-finding metrics of an evaluation; threshold chosen on the validation part."""

    __tablename__ = "evaluation_metrics"
    __table_args__ = (UniqueConstraint("evaluation_id", "finding"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(
        ForeignKey("evaluations.id", ondelete="CASCADE")
    )
    finding: Mapped[str] = mapped_column(String(128))
    auc: Mapped[Optional[float]] = mapped_column(Float)
    threshold: Mapped[Optional[float]] = mapped_column(Float)
    sensitivity: Mapped[Optional[float]] = mapped_column(Float)
    specificity: Mapped[Optional[float]] = mapped_column(Float)
    accuracy: Mapped[Optional[float]] = mapped_column(Float)
    n_positive: Mapped[int] = mapped_column(Integer, default=0)
    n_negative: Mapped[int] = mapped_column(Integer, default=0)


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_image", "image_id"),)

    evaluation_id: Mapped[int] = mapped_column(
        ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    finding_id: Mapped[int] = mapped_column(
        ForeignKey("findings.id", ondelete="CASCADE"), primary_key=True
    )
    probability: Mapped[float] = mapped_column(Float)
    label: Mapped[Optional[int]] = mapped_column(SmallInteger)


class Comparison(Base):
    __tablename__ = "comparisons"
    __table_args__ = (
        Index("ix_comparisons_evals", "evaluation_a_id", "evaluation_b_id"),
        Index("ix_comparisons_dataset", "dataset_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    evaluation_a_id: Mapped[int] = mapped_column(
        ForeignKey("evaluations.id", ondelete="CASCADE")
    )
    evaluation_b_id: Mapped[int] = mapped_column(
        ForeignKey("evaluations.id", ondelete="CASCADE")
    )
    label_a: Mapped[str] = mapped_column(String(128))
    label_b: Mapped[str] = mapped_column(String(128))
    group_id: Mapped[Optional[str]] = mapped_column(String(64))
    n_images: Mapped[int] = mapped_column(Integer)
    n_resamples: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    results: Mapped[list["ComparisonResult"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )


class ComparisonResult(Base):
    """One finding (or ``__macro__``) of a comparison."""

    __tablename__ = "comparison_results"
    __table_args__ = (UniqueConstraint("comparison_id", "finding"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    comparison_id: Mapped[int] = mapped_column(
        ForeignKey("comparisons.id", ondelete="CASCADE")
    )
    finding: Mapped[str] = mapped_column(String(128))
    auc_a: Mapped[Optional[float]] = mapped_column(Float)
    auc_b: Mapped[Optional[float]] = mapped_column(Float)
    diff: Mapped[Optional[float]] = mapped_column(Float)
    ci_low: Mapped[Optional[float]] = mapped_column(Float)
    ci_high: Mapped[Optional[float]] = mapped_column(Float)
    p_value: Mapped[Optional[float]] = mapped_column(Float)
    p_delong: Mapped[Optional[float]] = mapped_column(Float)
    p_adjusted: Mapped[Optional[float]] = mapped_column(Float)
    n_positive: Mapped[Optional[int]] = mapped_column(Integer)
    n_negative: Mapped[Optional[int]] = mapped_column(Integer)
    n_degenerate: Mapped[Optional[int]] = mapped_column(Integer)


class Study(Base):
    """A study file as run: its text, its parsed configuration, and its cells."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    file: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    cells: Mapped[list["StudyCell"]] = relationship(
        back_populates="study", cascade="all, delete-orphan", passive_deletes=True,
        order_by="StudyCell.id",
    )


class StudyCell(Base):
    """One step of a study (ingest, split, register, fine-tune, predict, compare, report)."""

    __tablename__ = "study_cells"
    __table_args__ = (
        UniqueConstraint("study_id", "key"),
        CheckConstraint(_in("state", CELL_STATES), name="state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(256))
    stage: Mapped[str] = mapped_column(String(32))
    dataset: Mapped[Optional[str]] = mapped_column(String(128))
    init: Mapped[Optional[str]] = mapped_column(String(128))
    seed: Mapped[Optional[int]] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    config_hash: Mapped[Optional[str]] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    run_id: Mapped[Optional[int]] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    evaluation_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("evaluations.id", ondelete="SET NULL")
    )
    comparison_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("comparisons.id", ondelete="SET NULL")
    )
    job_id: Mapped[Optional[str]] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[Optional[str]] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)  # e.g. every seed's comparison id
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    study: Mapped[Study] = relationship(back_populates="cells")
