"""Reading and writing runs, task results, scores and samples. Each task is written in one transaction."""
from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from harness.redact import redact, redact_value
from harness.store.db import Store
from harness.store.schema import Model, Run, Sample, Score, TaskResult, utcnow

HEARTBEAT_EVERY_S = 60.0
# A run whose process is on another host is judged by its heartbeat alone: 15 missed beats mean it is gone.
STALE_AFTER = timedelta(minutes=15)


@dataclass
class TaskOutcome:
    """What evaluating one task produced, ready to be stored."""

    task: str
    task_version: str
    data_hash: str
    fingerprint: str
    status: str = "done"
    error: str | None = None
    n: int | None = None
    scores: list[dict[str, Any]] = field(default_factory=list)  # {metric, value, stderr, n}
    samples: list[dict[str, Any]] = field(default_factory=list)  # {doc_id, item_id, prompt, output, target, metrics}
    wall_s: float | None = None
    peak_mem_mb: float | None = None
    prompt_tokens: int | None = None
    gen_tokens: int | None = None
    prompt_tokens_per_s: float | None = None
    gen_tokens_per_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def get_or_create_model(store: Store, identity: str, **fields: Any) -> int:
    fields = redact_value(fields)
    with store.session() as session, session.begin():
        row = session.scalar(select(Model).where(Model.identity_key == identity))
        if row is None:
            row = Model(identity_key=identity, **fields)
            session.add(row)
            session.flush()
        else:
            for key, value in fields.items():
                if value is not None and getattr(row, key) in (None, {}, ""):
                    setattr(row, key, value)
        return row.id


def create_run(store: Store, model_id: int, **fields: Any) -> int:
    """A new run in state 'running'. Its config, versions and other settings are stored with credentials redacted."""
    fields = {k: v if k == "chat_template" else redact_value(v) for k, v in fields.items()}
    with store.session() as session, session.begin():
        run = Run(model_id=model_id, status="running", host=socket.gethostname(), pid=os.getpid(), **fields)
        session.add(run)
        session.flush()
        return run.id


def heartbeat(store: Store, run_id: int) -> None:
    with store.session() as session, session.begin():
        session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow()))


class Heartbeat:
    """Updates runs.heartbeat_at every `every` seconds from a background thread while a run is in progress, so a
    task that runs for hours still shows its run alive (and a run whose process died shows silent)."""

    def __init__(self, store: Store, run_id: int, every: float | None = None) -> None:
        self.store, self.run_id, self.every = store, run_id, every or HEARTBEAT_EVERY_S
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"kobench-heartbeat-{run_id}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                heartbeat(self.store, self.run_id)
            except SQLAlchemyError:
                pass  # a full disk or a locked store: the task's own write reports it; the next beat tries again


def write_task(store: Store, run_id: int, outcome: TaskOutcome) -> int:
    """Store a finished task (scores + samples) atomically: all of it or none of it."""
    with store.session() as session, session.begin():
        result = TaskResult(run_id=run_id, task=outcome.task, task_version=outcome.task_version,
                            data_hash=outcome.data_hash, fingerprint=outcome.fingerprint, status=outcome.status,
                            error=redact(outcome.error) if outcome.error else None, n=outcome.n,
                            wall_s=outcome.wall_s, peak_mem_mb=outcome.peak_mem_mb,
                            prompt_tokens=outcome.prompt_tokens, gen_tokens=outcome.gen_tokens,
                            prompt_tokens_per_s=outcome.prompt_tokens_per_s,
                            gen_tokens_per_s=outcome.gen_tokens_per_s, details=redact_value(outcome.details))
        session.add(result)
        session.flush()
        session.add_all(Score(run_id=run_id, task_result_id=result.id, task=outcome.task, **s) for s in outcome.scores)
        session.add_all(Sample(run_id=run_id, task_result_id=result.id, task=outcome.task, **s)
                        for s in outcome.samples)
        session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow()))
        return result.id


def find_reusable(store: Store, fingerprint: str) -> TaskResult | None:
    """The newest finished (not reused) result with this fingerprint, from any run that was not still running."""
    with store.session() as session:
        return session.scalar(
            select(TaskResult).join(Run).where(TaskResult.fingerprint == fingerprint, TaskResult.status == "done",
                                               TaskResult.reused_from_id.is_(None), Run.status != "running")
            .order_by(TaskResult.id.desc()).limit(1))


def reuse_task(store: Store, run_id: int, source: TaskResult) -> int:
    """Link a finished result into a new run: copy its scores (a few rows), point at its samples."""
    with store.session() as session, session.begin():
        result = TaskResult(run_id=run_id, task=source.task, task_version=source.task_version,
                            data_hash=source.data_hash, fingerprint=source.fingerprint, status="done", n=source.n,
                            reused_from_id=source.id, wall_s=source.wall_s, peak_mem_mb=source.peak_mem_mb,
                            prompt_tokens=source.prompt_tokens, gen_tokens=source.gen_tokens,
                            prompt_tokens_per_s=source.prompt_tokens_per_s,
                            gen_tokens_per_s=source.gen_tokens_per_s, details=source.details)
        session.add(result)
        session.flush()
        scores = session.scalars(select(Score).where(Score.task_result_id == source.id)).all()
        session.add_all(Score(run_id=run_id, task_result_id=result.id, task=s.task, metric=s.metric, value=s.value,
                              stderr=s.stderr, n=s.n) for s in scores)
        return result.id


def finish_run(store: Store, run_id: int, status: str, error: str | None = None, **fields: Any) -> None:
    with store.session() as session, session.begin():
        run = session.get(Run, run_id)
        run.status = status
        run.error = redact(error) if error else None
        run.ended_at = utcnow()
        for key, value in fields.items():
            setattr(run, key, value)


def mark_stale_runs(store: Store) -> list[int]:
    """Runs left 'running' by a process that is gone (same host, dead pid) or silent for hours become 'failed'."""
    host = socket.gethostname()
    stale = []
    with store.session() as session, session.begin():
        for run in session.scalars(select(Run).where(Run.status == "running")):
            dead = run.host == host and run.pid and not _pid_alive(run.pid, run.started_at)
            silent = run.heartbeat_at and utcnow() - run.heartbeat_at > STALE_AFTER
            if dead or silent:
                run.status = "failed"
                run.error = (f"stale: process {run.pid} on {run.host} ended without finishing the run"
                             if dead else f"stale: no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M} UTC")
                run.ended_at = utcnow()
                stale.append(run.id)
    return stale


def _pid_alive(pid: int, started_at: datetime | None = None) -> bool:
    """Whether the process that started a run (at `started_at`, UTC) still runs. A zombie (killed, not yet reaped)
    is dead; a live process that started after the run did has only reused the pid."""
    if pid == os.getpid():
        return True
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        created = process.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    if started_at is not None:
        run_started = started_at.replace(tzinfo=timezone.utc).timestamp()
        return created <= run_started + 1.0  # create_time has 10 ms ticks; the run row comes seconds after start
    return True


def sample_source_id(store: Store, task_result_id: int) -> int:
    """Samples of a reused result live with the result it was reused from."""
    with store.session() as session:
        result = session.get(TaskResult, task_result_id)
        return result.reused_from_id or result.id
