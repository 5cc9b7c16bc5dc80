"""The results store: migrations match the models, guards against foreign/newer databases, bad URLs and paths."""
from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from harness.errors import StoreError
from harness.store import open_store
from harness.store.db import head_revision
from harness.store.schema import SCHEMA_VERSION, Base
from tests.conftest import sql as _sql


def test_migrated_empty_database_equals_models(db_path: Path) -> None:
    store = open_store(db_path)
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    store.dispose()
    assert diffs == []
    assert revision == head_revision()


def test_sqlite_uses_wal_and_busy_timeout(db_path: Path) -> None:
    store = open_store(db_path)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
    store.dispose()


def test_reopening_does_not_change_the_file(db_path: Path) -> None:
    open_store(db_path).dispose()
    before = db_path.read_bytes()
    open_store(db_path).dispose()
    assert db_path.read_bytes() == before


def test_newer_schema_is_refused_naming_both_versions(db_path: Path) -> None:
    open_store(db_path).dispose()
    _sql(db_path, "UPDATE kobench_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError) as err:
        open_store(db_path)
    assert "schema version 99" in str(err.value) and f"schema version {SCHEMA_VERSION}" in str(err.value)


def test_unknown_revision_is_refused(db_path: Path) -> None:
    open_store(db_path).dispose()
    _sql(db_path, "UPDATE alembic_version SET version_num = 'ffff_from_the_future'")
    with pytest.raises(StoreError, match="newer kobench"):
        open_store(db_path)


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    _sql(other, "CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StoreError, match="not a kobench results store"):
        open_store(other)


def test_not_a_database_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "notes.db"
    junk.write_text("hello, this is not sqlite\n" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        open_store(junk)


@pytest.mark.parametrize("url,needle", [
    ("nosuchdb+driver://user:secret@host/db", "unknown database driver"),
    ("postgresql+nosuchdriver://user:secret@host/db", "unknown database driver"),
])
def test_bad_driver_url(url: str, needle: str) -> None:
    with pytest.raises(StoreError, match=needle) as err:
        open_store(url)
    assert "secret" not in str(err.value)  # passwords are redacted in messages


def test_missing_directory_and_directory_path(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nope" / "results.db")
    with pytest.raises(StoreError, match="is a directory"):
        open_store(tmp_path)


def test_readonly_open_refuses_writes(db_path: Path) -> None:
    open_store(db_path).dispose()
    store = open_store(db_path, readonly=True)
    with pytest.raises(Exception, match="readonly|read-only|attempt to write"):
        with store.engine.begin() as conn:
            conn.execute(text("INSERT INTO kobench_meta (key, value) VALUES ('x', 'y')"))
    store.dispose()
