"""Eight `kobench run` processes writing to one store at once, on SQLite (WAL + BEGIN IMMEDIATE) and on PostgreSQL
(advisory locks): every run and every sample arrives, nothing is locked out, nothing is duplicated or partial."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from harness.store import open_store
from harness.store.schema import Model, Run, Sample, Score, TaskResult
from tests.conftest import FIXTURE_TASKS, REPO
from tests.pg import PgServer

WRITERS = 8
TASKS = ["ko_fixture_mc", "ko_fixture_gen"]
ITEMS = {"ko_fixture_mc": 6, "ko_fixture_gen": 4}  # the fixture tasks' item counts


def _start_writers(model: Path, db: str, logs: Path) -> list[tuple[subprocess.Popen[str], Path, Path]]:
    env = {**os.environ, "KOBENCH_TASKS_DIR": str(FIXTURE_TASKS), "OMP_NUM_THREADS": "1"}
    procs = []
    for i in range(WRITERS):
        out, err = logs / f"{i}.out", logs / f"{i}.err"
        # --force: identical runs would otherwise be reused from each other instead of computed
        cmd = [sys.executable, "-m", "harness", "run", "--model", str(model), "--tasks", ",".join(TASKS),
               "--device", "cpu", "--batch-size", "2", "--db", db, "--force", "--json"]
        with open(out, "w") as o, open(err, "w") as e:
            procs.append((subprocess.Popen(cmd, stdout=o, stderr=e, text=True, env=env, cwd=REPO), out, err))
    return procs


def _check_store(db: str, procs: list[tuple[subprocess.Popen[str], Path, Path]]) -> None:
    reported = []
    for proc, out, err in procs:
        assert proc.wait(timeout=600) == 0, err.read_text()[-2000:]
        stderr = err.read_text()
        assert "database is locked" not in stderr and "could not obtain lock" not in stderr
        assert "deadlock" not in stderr.lower() and "UniqueViolation" not in stderr
        reported.append(json.loads(out.read_text().strip().splitlines()[-1]))
    assert {r["status"] for r in reported} == {"done"}
    run_ids = sorted(r["run_id"] for r in reported)
    assert len(set(run_ids)) == WRITERS

    store = open_store(db, readonly=True)
    with store.session() as session:
        runs = session.scalars(select(Run).order_by(Run.id)).all()
        assert [r.id for r in runs] == run_ids and {r.status for r in runs} == {"done"}
        assert session.scalar(select(func.count()).select_from(Model)) == 1  # one model row, not one per writer
        per_result = dict(session.execute(select(TaskResult.id, func.count(Sample.id))
                                          .join(Sample, Sample.task_result_id == TaskResult.id)
                                          .group_by(TaskResult.id)).all())
        results = session.scalars(select(TaskResult)).all()
        assert len(results) == WRITERS * len(TASKS)
        assert {(r.run_id, r.task) for r in results} == {(i, t) for i in run_ids for t in TASKS}
        for r in results:  # whole tasks only: every result has all its samples and its scores
            assert r.status == "done" and r.n == ITEMS[r.task] and per_result[r.id] == ITEMS[r.task]
            assert session.scalar(select(func.count()).select_from(Score).where(Score.task_result_id == r.id))
        assert session.scalar(select(func.count()).select_from(Sample)) == WRITERS * sum(ITEMS.values())
        outputs = {}
        for task, doc_id, output in session.execute(select(Sample.task, Sample.doc_id, Sample.output)):
            outputs.setdefault((task, doc_id), set()).add(output)
        assert all(len(v) == 1 for v in outputs.values())  # the same model gives every writer the same outputs
    store.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_eight_writers_at_once(backend: str, tiny_model: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "postgresql":
        server: PgServer = request.getfixturevalue("pg_server")
        name = server.create_database()
        request.addfinalizer(lambda: server.drop_database(name))
        db = server.url(name)
    else:
        db = str(tmp_path / "results.db")
    start = time.perf_counter()
    procs = _start_writers(tiny_model, db, tmp_path)
    try:
        _check_store(db, procs)
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
    print(f"{WRITERS} writers on {backend}: {time.perf_counter() - start:.1f}s")
