"""Store upkeep: `kobench db check` (integrity + consistency of the record) and `kobench db backup` (an online copy).

The checks re-derive what the runner wrote from what else it wrote: a task's plain-mean scores from its samples'
per-sample metrics, a finished run's planned tasks from runs.task_versions, reused results from their sources.
"""
from __future__ import annotations

import math
import os
import sqlite3
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DatabaseError

from harness.errors import StoreError
from harness.store.db import Store, normalize_url, open_store, redact_url, sqlite_path
from harness.store.schema import Run, Sample, Score, TaskResult

MAX_LISTED = 50  # problems listed one by one; the rest are counted


@dataclass
class CheckReport:
    """What `kobench db check` found. `problems` make it exit 1; `notes` are worth knowing but not wrong."""

    db: str
    integrity: str = "not run"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_store(db: str | os.PathLike[str] | None = None) -> CheckReport:
    """Integrity (PRAGMA integrity_check and foreign_key_check, SQLite) and consistency of the record."""
    url = normalize_url(db)
    report = CheckReport(db=redact_url(url))
    path = sqlite_path(url)
    if path is not None:
        if not path.exists():
            raise StoreError(f"--db {path}: no such results store. Pass the path of an existing store")
        report.integrity, damage = sqlite_integrity(path)
        report.problems += damage
    else:
        report.integrity = f"not checked ({make_backend(url)}: the server keeps its own checksums)"
    try:
        store = open_store(url, readonly=True)
    except StoreError:
        if report.problems:
            return report  # damaged beyond opening: the integrity problems say why
        raise
    try:
        report.counts = table_counts(store)
        report.problems += consistency_problems(store, report.notes)
    except DatabaseError as exc:
        report.problems.append(f"cannot read the record ({str(exc.orig or exc).splitlines()[0]})")
    finally:
        store.dispose()
    if len(report.problems) > MAX_LISTED:
        extra = len(report.problems) - MAX_LISTED
        report.problems = report.problems[:MAX_LISTED] + [f"... and {extra} more problems"]
    return report


def make_backend(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name()


def sqlite_integrity(path: Path) -> tuple[str, list[str]]:
    """("ok" or the first complaint, every complaint) from SQLite's own checks, on a read-only connection."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    except sqlite3.Error as exc:
        return str(exc), [f"integrity: cannot open {path} ({exc})"]
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        foreign = conn.execute("PRAGMA foreign_key_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc), [f"integrity: {path}: {exc}"]
    finally:
        conn.close()
    problems = [] if rows == ["ok"] else [f"integrity: {row}" for row in rows]
    problems += [f"integrity: {table} row {rowid} points at a missing {parent} row" for table, rowid, parent, _ in
                 foreign]
    return ("ok" if not problems else problems[0].removeprefix("integrity: ")), problems


def table_counts(store: Store) -> dict[str, int]:
    with store.session() as session:
        return {table.__tablename__: session.scalar(select(func.count()).select_from(table))
                for table in (Run, TaskResult, Score, Sample)}


def consistency_problems(store: Store, notes: list[str] | None = None) -> list[str]:
    """Every way the stored record contradicts itself, one line each."""
    notes = notes if notes is not None else []
    problems: list[str] = []
    with store.session() as session:
        runs = {run.id: run for run in session.scalars(select(Run))}
        results = {result.id: result for result in session.scalars(select(TaskResult))}
        scores: dict[int, list[Score]] = defaultdict(list)
        for score in session.scalars(select(Score)):
            scores[score.task_result_id].append(score)
        samples: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for result_id, metrics in session.execute(select(Sample.task_result_id, Sample.metrics)):
            samples[result_id].append(metrics or {})
    problems += _orphans(runs, results, scores, samples)
    problems += _planned_tasks(runs, results)
    problems += _reused_results(results, scores)
    problems += _scores_match_samples(results, scores, samples, notes)
    for run in runs.values():
        if run.status == "running":
            notes.append(f"run {run.id} is 'running' (pid {run.pid} on {run.host}, last heartbeat "
                         f"{run.heartbeat_at:%Y-%m-%d %H:%M} UTC); the next `kobench run` marks it failed if its "
                         "process is gone")
    return problems


def _orphans(runs: dict[int, Run], results: dict[int, TaskResult], scores: dict[int, list[Score]],
             samples: dict[int, list[dict[str, Any]]]) -> list[str]:
    problems = [f"task result {r.id} ({r.task}) belongs to run {r.run_id}, which does not exist"
                for r in results.values() if r.run_id not in runs]
    problems += [f"{len(rows)} samples belong to task result {result_id}, which does not exist"
                 for result_id, rows in samples.items() if result_id not in results]
    problems += [f"{len(rows)} scores belong to task result {result_id}, which does not exist"
                 for result_id, rows in scores.items() if result_id not in results]
    return problems


def _planned_tasks(runs: dict[int, Run], results: dict[int, TaskResult]) -> list[str]:
    """A run marked done has a done result for every task it planned (runs.task_versions)."""
    by_run: dict[int, dict[str, TaskResult]] = defaultdict(dict)
    for result in results.values():
        by_run[result.run_id][result.task] = result
    problems = []
    for run in runs.values():
        if run.status != "done":
            continue
        for task in sorted(run.task_versions or {}):
            result = by_run[run.id].get(task)
            if result is None:
                problems.append(f"run {run.id} is done but has no result for its planned task {task}")
            elif result.status != "done":
                problems.append(f"run {run.id} is done but its task {task} is {result.status}")
    return problems


def _reused_results(results: dict[int, TaskResult], scores: dict[int, list[Score]]) -> list[str]:
    """A reused result points at a done result and carries the same scores."""
    problems = []
    for result in results.values():
        if result.reused_from_id is None:
            continue
        source = results.get(result.reused_from_id)
        if source is None or source.status != "done":
            problems.append(f"task result {result.id} ({result.task}, run {result.run_id}) is reused from "
                            f"{result.reused_from_id}, which is {'missing' if source is None else source.status}")
            continue
        mine = {s.metric: s.value for s in scores.get(result.id, [])}
        theirs = {s.metric: s.value for s in scores.get(source.id, [])}
        if mine.keys() != theirs.keys() or any(not _same(mine[m], theirs[m]) for m in mine):
            problems.append(f"task result {result.id} ({result.task}, run {result.run_id}): its scores differ from "
                            f"those of result {source.id} it was reused from")
    return problems


def _scores_match_samples(results: dict[int, TaskResult], scores: dict[int, list[Score]],
                          samples: dict[int, list[dict[str, Any]]], notes: list[str]) -> list[str]:
    """Each plain-mean score (aggregation: mean in the task YAML, and every per-category score) equals the mean of
    its samples' per-sample values; a result has one sample per item."""
    from harness.tasks import discover_tasks

    tasks = discover_tasks()
    unknown: set[str] = set()
    problems = []
    for result in results.values():
        rows = samples.get(result.id)
        if result.reused_from_id is not None or result.status != "done" or not rows:
            continue
        label = f"task result {result.id} ({result.task}, run {result.run_id})"
        if result.n is not None and len(rows) != result.n:
            problems.append(f"{label}: n = {result.n} but {len(rows)} samples are stored")
        info = tasks.get(result.task)
        if info is None:
            unknown.add(result.task)
        means = {m["metric"] for m in (info.raw.get("metric_list") or []) if m.get("aggregation") == "mean"} \
            if info else set()
        for score in scores.get(result.id, []):
            expected = _expected_mean(score.metric, rows, means)
            if expected is not None and score.value is not None and not _same(score.value, expected):
                problems.append(f"{label}: {score.metric} = {score.value:.6g} but its samples average {expected:.6g}")
    if unknown:
        notes.append(f"overall scores of {', '.join(sorted(unknown))} not checked against samples: not in the tasks "
                     "directory, so their aggregations are unknown (per-category scores were checked)")
    return problems


def _expected_mean(metric: str, rows: list[dict[str, Any]], means: set[str]) -> float | None:
    """The mean the score should have, or None when it is not a plain mean of stored per-sample values."""
    if "[" in metric and metric.endswith("]"):
        name, _, group = metric[:-1].partition("[")
        field_name, _, value = group.partition("=")
        rows = [r for r in rows if f"_{field_name}" in r and str(r[f"_{field_name}"]) == value]
    else:
        name = metric
        if name.partition(",")[0] not in means:
            return None
    values = [r[name] for r in rows if isinstance(r.get(name), (int, float)) and not isinstance(r.get(name), bool)]
    return sum(values) / len(values) if values else None


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def backup_store(db: str | os.PathLike[str] | None, target: Path) -> dict[str, Any]:
    """A consistent copy of a live SQLite store (SQLite's online backup API: one snapshot even while a run writes),
    written to a temporary file, verified and then renamed to `target`. Never overwrites."""
    url = normalize_url(db)
    source = sqlite_path(url)
    if source is None:
        raise StoreError(f"--db {redact_url(url)}: `kobench db backup` copies SQLite stores; back up a "
                         f"{make_backend(url)} store with its own tools (pg_dump for PostgreSQL)")
    open_store(url, readonly=True).dispose()  # a kobench store of a schema this kobench knows
    target = Path(target).expanduser().resolve()
    if target == source.resolve():
        raise StoreError(f"backup {target}: is the store itself. Pass another file name")
    if target.exists():
        raise StoreError(f"backup {target}: already exists; pass a new file name (a backup never overwrites)")
    if not target.parent.is_dir():
        raise StoreError(f"backup {target}: directory {target.parent} does not exist. Create it or pass another path")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)  # all pages in one step, under one read transaction: a consistent snapshot
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
            verdict = dst.execute("PRAGMA integrity_check").fetchone()[0]
            runs = dst.execute("SELECT count(*) FROM runs").fetchone()[0]
        finally:
            dst.close()
            src.close()
        if verdict != "ok":
            raise StoreError(f"backup {target}: the copy failed its integrity check ({verdict}); the source may be "
                             "damaged: run `kobench db check`")
        os.replace(partial, target)
    except sqlite3.Error as exc:
        raise StoreError(f"backup {target}: SQLite refused ({exc}). Check free space and permissions") from None
    finally:
        partial.unlink(missing_ok=True)
    return {"db": redact_url(url), "backup": str(target), "bytes": target.stat().st_size, "runs": runs}
