"""The results store on a real PostgreSQL server (tests/pg.py starts one): the same migrations, runs written and read
back like on SQLite, the same ranking, the CLI, the guards, and credentials kept out of messages."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import DBAPIError

from harness.config import RunConfig
from harness.errors import StoreError
from harness.ranking import ranking
from harness.runner import run
from harness.store import open_store, records
from harness.store.db import head_revision
from harness.store.schema import SCHEMA_VERSION, Base, Model, Run, Sample, Score, TaskResult
from tests.conftest import FIXTURE_TASKS, kobench, last_json_line
from tests.pg import PASSWORD, PASSWORD_ROLE, PgServer

TASKS = ["ko_fixture_mc", "ko_fixture_gen"]
MEASURED = {"peak_mem_mb", "gen_tokens_per_s"}  # timings and memory differ from run to run, scores do not


def _sql(url: str, *statements: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def test_migrated_empty_database_equals_models(pg_url: str) -> None:
    store = open_store(pg_url)
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        version = conn.execute(text("SELECT value FROM kobench_meta WHERE key = 'schema_version'")).scalar()
    store.dispose()
    assert diffs == []
    assert revision == head_revision()
    assert version == str(SCHEMA_VERSION)
    open_store(pg_url).dispose()  # a second open finds the head revision and changes nothing


def test_concurrent_opens_migrate_once_and_model_rows_do_not_race(pg_url: str) -> None:
    """Eight threads open a fresh database at once (the advisory migration lock), then all create the same model
    at once: on PostgreSQL's read-committed default two inserts of one identity would collide without the store's
    write lock (SQLite gets the same from BEGIN IMMEDIATE)."""
    ids: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        try:
            barrier.wait()
            store = open_store(pg_url)
            barrier.wait()
            ids.append(records.get_or_create_model(store, "same-identity", kind="model", name="m", source="test"))
            store.dispose()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 1 and len(ids) == 8
    store = open_store(pg_url, readonly=True)
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Model)) == 1
        assert session.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    store.dispose()


@pytest.fixture(scope="module")
def both_stores(pg_server: PgServer, tiny_model: Path, other_tiny_model: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The same two runs (two tiny models, fixture tasks) written to a PostgreSQL database and to an SQLite file."""
    name = pg_server.create_database()
    stores = {"postgresql": pg_server.url(name), "sqlite": str(tmp_path_factory.mktemp("sqlite") / "results.db")}
    results: dict[str, list[Any]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KOBENCH_TASKS_DIR", str(FIXTURE_TASKS))
        for kind, db in stores.items():
            results[kind] = [run(RunConfig(model=str(model), tasks=TASKS, db=db, device="cpu", batch_size="2"))
                             for model in (tiny_model, other_tiny_model)]
    yield {"urls": stores, "results": results}
    pg_server.drop_database(name)


def _samples(db: str) -> list[tuple]:
    store = open_store(db, readonly=True)
    with store.session() as session:
        rows = session.execute(select(Run.id, Sample.task, Sample.doc_id, Sample.item_id, Sample.prompt,
                                      Sample.output, Sample.target, Sample.metrics)
                               .join(Run, Sample.run_id == Run.id).order_by(Run.id, Sample.task, Sample.doc_id)).all()
    store.dispose()
    return [tuple(r) for r in rows]


def test_run_is_written_and_read_back_like_on_sqlite(both_stores: dict[str, Any]) -> None:
    pg, lite = both_stores["urls"]["postgresql"], both_stores["urls"]["sqlite"]
    assert [r.status for r in both_stores["results"]["postgresql"]] == ["done", "done"]
    assert [r.scores for r in both_stores["results"]["postgresql"]] == \
        [r.scores for r in both_stores["results"]["sqlite"]]
    pg_samples = _samples(pg)
    assert len(pg_samples) == 2 * (6 + 4)  # two runs x (6 mc + 4 gen fixture items)
    assert pg_samples == _samples(lite)  # prompts (Korean), outputs, targets and JSON metrics round-trip alike
    assert any("정답" in row[4] for row in pg_samples)

    store = open_store(pg, readonly=True)
    with store.session() as session:
        run_row = session.scalars(select(Run).order_by(Run.id)).first()
        assert run_row.status == "done" and run_row.ended_at is not None and run_row.wall_s > 0
        assert run_row.config["tasks"] == TASKS and run_row.versions["lm-eval"] == "0.4.13"
        assert session.scalar(select(func.count()).select_from(TaskResult)) == 4
        breakdown = session.scalars(select(Score.metric).where(Score.metric.like("acc[category=%"))).all()
        assert breakdown  # per-category scores stored like on SQLite
    store.dispose()


def _comparable(rows: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in (r if isinstance(r, dict) else r.to_dict()).items() if k not in MEASURED}
            for r in rows]


def test_ranking_equals_the_sqlite_ranking(both_stores: dict[str, Any]) -> None:
    rankings = {}
    for kind, db in both_stores["urls"].items():
        store = open_store(db, readonly=True)
        rankings[kind] = ranking(store)
        store.dispose()
    assert len(rankings["postgresql"]) == 2
    assert _comparable(rankings["postgresql"]) == _comparable(rankings["sqlite"])


def test_show_json_through_the_cli(both_stores: dict[str, Any]) -> None:
    shown = {}
    for kind, db in both_stores["urls"].items():
        proc = kobench("show", "--json", "--db", db, env={"KOBENCH_TASKS_DIR": str(FIXTURE_TASKS)}, check=True)
        shown[kind] = last_json_line(proc.stdout)
    assert [row["model"] for row in shown["postgresql"]] and len(shown["postgresql"]) == 2
    assert _comparable(shown["postgresql"]) == _comparable(shown["sqlite"])


def test_newer_schema_is_refused(pg_url: str) -> None:
    open_store(pg_url).dispose()
    _sql(pg_url, "UPDATE kobench_meta SET value = '99' WHERE key = 'schema_version'")
    for readonly in (False, True):
        with pytest.raises(StoreError) as err:
            open_store(pg_url, readonly=readonly)
        assert "schema version 99" in str(err.value) and f"schema version {SCHEMA_VERSION}" in str(err.value)


def test_unknown_revision_is_refused(pg_url: str) -> None:
    open_store(pg_url).dispose()
    _sql(pg_url, "UPDATE alembic_version SET version_num = 'ffff_from_the_future'")
    with pytest.raises(StoreError, match="newer kobench"):
        open_store(pg_url)


def test_foreign_database_is_refused(pg_url: str) -> None:
    _sql(pg_url, "CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StoreError, match="not a kobench results store"):
        open_store(pg_url)


def test_read_only_store_refuses_writes_and_an_empty_database(pg_url: str) -> None:
    proc = kobench("show", "--db", pg_url)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no kobench results store" in proc.stderr
    open_store(pg_url).dispose()
    store = open_store(pg_url, readonly=True)
    with pytest.raises(DBAPIError, match="read-only transaction"):
        records.get_or_create_model(store, "x", kind="model", name="m", source="test")
    store.dispose()


def test_password_works_and_is_redacted_in_errors(pg_server: PgServer) -> None:
    name = pg_server.create_database()
    pg_server.execute(f'ALTER DATABASE "{name}" OWNER TO {PASSWORD_ROLE}')
    try:
        good = pg_server.url(name, user=PASSWORD_ROLE, password=PASSWORD)
        open_store(good).dispose()  # scram authentication with the right password migrates the store

        wrong = pg_server.url(name, user=PASSWORD_ROLE, password="wrong-Secret-42")
        with pytest.raises(StoreError) as err:
            open_store(wrong)
        message = str(err.value)
        assert "password authentication failed" in message
        assert "wrong-Secret-42" not in message and "***" in message

        missing = pg_server.url("no_such_db", user=PASSWORD_ROLE, password=PASSWORD)
        proc = kobench("show", "--json", "--db", missing)
        assert proc.returncode == 2 and proc.stderr.startswith("error:")
        assert PASSWORD not in proc.stderr + proc.stdout and "***" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        pg_server.drop_database(name)


def test_a_writer_waits_for_the_write_lock_then_gives_up_with_a_clear_message(pg_url: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """One writer holds a transaction open; another waits (like SQLite's busy timeout) and then fails with the
    store's one-line message instead of a driver traceback."""
    from harness.store import db

    holder = open_store(pg_url)
    waiter = open_store(pg_url)
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 300)
    with holder.engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # the transaction has begun: it holds the write lock until it ends
        with pytest.raises(DBAPIError) as err:
            records.get_or_create_model(waiter, "blocked", kind="model", name="m", source="test")
        message = str(waiter.write_error(err.value))
        conn.rollback()
    assert "lock timeout" in message and "held the store's write lock" in message
    assert records.get_or_create_model(waiter, "blocked", kind="model", name="m", source="test")  # free again
    holder.dispose()
    waiter.dispose()
