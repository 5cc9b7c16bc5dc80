"""The results store schema: the one module that owns it (Alembic migrations live beside it in migrations/)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Bumped with every migration; a database whose kobench_meta says more than this was written by a newer kobench.
SCHEMA_VERSION = 1

RUN_STATUSES = ("running", "done", "failed", "budget_exceeded")
TASK_STATUSES = ("done", "failed", "budget_exceeded")
MODEL_KINDS = ("model", "adapter", "ensemble")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class StoreMeta(Base):
    """Key/value facts about the store itself: schema version and the kobench version that created it."""

    __tablename__ = "kobench_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class Model(Base):
    """A model identity: base weights, an adapter on a base, or an ensemble of runs."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # identity_key is a hash over (kind, source, weights hash, adapter hash, members): one row per distinct model.
    identity_key: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="model")
    name: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(512))
    revision: Mapped[str | None] = mapped_column(String(128))
    weights_hash: Mapped[str | None] = mapped_column(String(64))
    n_params: Mapped[int | None] = mapped_column(BigInteger)
    dtype: Mapped[str | None] = mapped_column(String(32))
    quantization: Mapped[str | None] = mapped_column(String(32))
    base_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    adapter_hash: Mapped[str | None] = mapped_column(String(64))
    adapter_path: Mapped[str | None] = mapped_column(String(1024))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    base_model: Mapped[Model | None] = relationship(remote_side=[id])


class Run(Base):
    """One `kobench run` (or ensemble): a model on a set of tasks under a hardware profile."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    kind: Mapped[str] = mapped_column(String(16), default="eval")
    hardware: Mapped[str] = mapped_column(String(64), default="unspecified")
    status: Mapped[str] = mapped_column(String(24), default="running")
    error: Mapped[str | None] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seeds: Mapped[dict[str, Any]] = mapped_column(default=dict)
    generation_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    task_versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    data_hashes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    chat_template: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    wall_s: Mapped[float | None] = mapped_column(Float)
    peak_mem_mb: Mapped[float | None] = mapped_column(Float)
    prompt_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    gen_tokens_per_s: Mapped[float | None] = mapped_column(Float)

    model: Mapped[Model] = relationship()
    task_results: Mapped[list[TaskResult]] = relationship(back_populates="run", order_by="TaskResult.id")


class TaskResult(Base):
    """One task inside a run, written as soon as the task finishes. A reused result points at its source."""

    __tablename__ = "task_results"
    __table_args__ = (UniqueConstraint("run_id", "task"), Index("ix_task_results_fingerprint", "fingerprint"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    task: Mapped[str] = mapped_column(String(128))
    task_version: Mapped[str | None] = mapped_column(String(32))
    data_hash: Mapped[str | None] = mapped_column(String(64))
    # fingerprint = hash(model identity, task version, data hash, generation config, limit, precision): the reuse key.
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24), default="done")
    error: Mapped[str | None] = mapped_column(Text)
    n: Mapped[int | None] = mapped_column(Integer)
    reused_from_id: Mapped[int | None] = mapped_column(ForeignKey("task_results.id"))
    wall_s: Mapped[float | None] = mapped_column(Float)
    peak_mem_mb: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    gen_tokens: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    gen_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[Run] = relationship(back_populates="task_results")
    scores: Mapped[list[Score]] = relationship(back_populates="task_result", order_by="Score.id")


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (Index("ix_scores_run_task", "run_id", "task"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    task_result_id: Mapped[int] = mapped_column(ForeignKey("task_results.id"))
    task: Mapped[str] = mapped_column(String(128))
    metric: Mapped[str] = mapped_column(String(128))
    value: Mapped[float | None] = mapped_column(Float)
    stderr: Mapped[float | None] = mapped_column(Float)
    n: Mapped[int | None] = mapped_column(Integer)

    task_result: Mapped[TaskResult] = relationship(back_populates="scores")


class Sample(Base):
    __tablename__ = "samples"
    __table_args__ = (Index("ix_samples_result_doc", "task_result_id", "doc_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    task_result_id: Mapped[int] = mapped_column(ForeignKey("task_results.id"))
    task: Mapped[str] = mapped_column(String(128))
    doc_id: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[str | None] = mapped_column(String(255))
    prompt: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
