"""Opening the results store: URL handling, SQLite pragmas, migrations on open, schema-version guard."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from harness.errors import StoreError
from harness.paths import default_db_url
from harness.store.schema import SCHEMA_VERSION, StoreMeta

STORE_DIR = Path(__file__).resolve().parent
BUSY_TIMEOUT_MS = 60_000
# PostgreSQL advisory lock keys (any two bigints no other application of the database uses)
PG_MIGRATION_LOCK = 724242
PG_WRITE_LOCK = 724243


def normalize_url(db: str | os.PathLike[str] | None) -> str:
    """A path becomes an SQLite URL; anything with `://` is taken as an SQLAlchemy URL."""
    db = str(db) if db else default_db_url()
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def redact_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs (otherwise as the user wrote it)."""
    from harness.redact import redact

    try:
        parsed = make_url(url)
    except ArgumentError:
        return redact(url)
    return parsed.render_as_string(hide_password=True) if parsed.password else redact(url)


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    if parsed.query.get("uri") == "true" and parsed.database.startswith("file:"):
        return Path(parsed.database.removeprefix("file:"))  # sqlite:///file:PATH?mode=ro&uri=true
    return Path(parsed.database)


def _alembic_config() -> Config:
    cfg = Config(str(STORE_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(STORE_DIR / "migrations"))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def _check_writable_sqlite(path: Path) -> None:
    if path.exists():
        if path.is_dir():
            raise StoreError(f"--db {path}: is a directory, not a database file. Pass a file path such as {path}/results.db")
        if not os.access(path, os.W_OK):
            raise StoreError(f"--db {path}: the file is read-only. Make it writable or pass another --db path")
    else:
        parent = path.parent
        if not parent.is_dir():
            raise StoreError(f"--db {path}: directory {parent} does not exist. Create it or pass another --db path")
        if not os.access(parent, os.W_OK):
            raise StoreError(f"--db {path}: directory {parent} is not writable. Pass a --db path in a writable directory")


def _make_engine(url: str, readonly: bool) -> Engine:
    path = sqlite_path(url)
    try:
        if path is not None:
            if readonly:
                # mode=ro: SQLite itself refuses writes, whatever the app does.
                engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", connect_args={"timeout": 60},
                                       json_serializer=_json_dumps)
            else:
                engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000},
                                       json_serializer=_json_dumps)
            _install_sqlite_pragmas(engine, readonly)
            return engine
        engine = create_engine(url, pool_pre_ping=True, json_serializer=_json_dumps)
        if readonly:
            @event.listens_for(engine, "begin")
            def _read_only(conn) -> None:  # noqa: ANN001
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        elif engine.dialect.name == "postgresql":
            _install_postgres_write_lock(engine)
        return engine
    except NoSuchModuleError as exc:
        raise StoreError(f"--db {redact_url(url)}: unknown database driver ({exc}). "
                         "Use a path, sqlite:///FILE or postgresql+psycopg://USER@HOST/DB") from None
    except (ArgumentError, ModuleNotFoundError, ImportError) as exc:
        raise StoreError(f"--db {redact_url(url)}: not a usable SQLAlchemy URL ({exc}). "
                         "Use a path, sqlite:///FILE or postgresql+psycopg://USER@HOST/DB") from None


def _json_dumps(value: object) -> str:
    # Korean text stays readable in the database (and in `sqlite3` sessions) instead of \uXXXX escapes.
    return json.dumps(value, ensure_ascii=False)


def _install_sqlite_pragmas(engine: Engine, readonly: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        # Let SQLAlchemy's "begin" below control transactions (pysqlite's implicit BEGIN is DEFERRED).
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        # BEGIN IMMEDIATE takes the write lock up front, so concurrent writers wait on busy_timeout instead of
        # failing with "database is locked" when a read transaction tries to upgrade to a write.
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _install_postgres_write_lock(engine: Engine) -> None:
    """PostgreSQL's counterpart of SQLite's BEGIN IMMEDIATE: every transaction of a writing process first takes one
    transaction-scoped advisory lock, so writers run one at a time and each sees what the previous one committed.
    Without it two runs of one new model both find no model row under READ COMMITTED and both insert one
    (a unique-key error). The store's transactions are short (one task's rows at most); like SQLite's busy
    timeout, a writer gives up after BUSY_TIMEOUT_MS."""

    @event.listens_for(engine, "begin")
    def _one_writer_at_a_time(conn) -> None:  # noqa: ANN001
        if conn.get_execution_options().get("kobench_no_write_lock"):
            return
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {BUSY_TIMEOUT_MS}")
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")


def _use_wal(engine: Engine) -> None:
    """Readers never block the writer. Set once the file is known to be a kobench store: journal_mode is stored in
    the file itself, so setting it on connect would rewrite a foreign database that is then refused."""
    raw = engine.raw_connection()
    try:
        raw.cursor().execute("PRAGMA journal_mode = WAL")
    finally:
        raw.close()


@contextlib.contextmanager
def _migration_lock(engine: Engine, url: str) -> Iterator[None]:
    path = sqlite_path(url)
    if path is not None:
        lock_path = path.with_name(path.name + ".lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if engine.dialect.name == "postgresql":
        # a session-level lock on a connection of its own, which must not hold the write lock while it waits
        # (the process that migrates takes the write lock for the migration itself: that would deadlock)
        with engine.connect() as conn:
            conn.execution_options(kobench_no_write_lock=True)
            conn.execute(text(f"SELECT pg_advisory_lock({PG_MIGRATION_LOCK})"))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text(f"SELECT pg_advisory_unlock({PG_MIGRATION_LOCK})"))
                conn.commit()
        return
    yield


def _check_schema(engine: Engine, url: str) -> bool:
    """Refuse foreign or newer databases. Returns True when the database is already at our head revision."""
    names = set(inspect(engine).get_table_names())
    if not names:
        return False
    if "kobench_meta" not in names or "alembic_version" not in names:
        raise StoreError(f"--db {redact_url(url)}: not a kobench results store (it has tables {', '.join(sorted(names)[:5])}"
                         f"{'...' if len(names) > 5 else ''} but no kobench_meta). Pass another --db path")
    with engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        meta = dict(conn.execute(select(StoreMeta.key, StoreMeta.value)).all())
    db_version = int(meta.get("schema_version", 0))
    known = {rev.revision for rev in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}
    if db_version > SCHEMA_VERSION or (revision is not None and revision not in known):
        raise StoreError(
            f"--db {redact_url(url)}: schema version {db_version} (revision {revision}) was written by a newer kobench "
            f"(writer {meta.get('kobench_version', '?')}); this kobench {_kobench_version()} knows schema version "
            f"{SCHEMA_VERSION}. Upgrade kobench (pip install -U kobench) or use another --db")
    return revision == head_revision()


def _kobench_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kobench")
    except PackageNotFoundError:
        return "0+unknown"


def migrate(engine: Engine, url: str) -> None:
    """Bring the database to the head revision (creating it if empty) under a cross-process lock."""
    if _check_schema(engine, url):
        return
    with _migration_lock(engine, url):
        if _check_schema(engine, url):  # another process migrated while we waited
            return
        cfg = _alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        with Session(engine) as session, session.begin():
            session.merge(StoreMeta(key="schema_version", value=str(SCHEMA_VERSION)))
            if session.get(StoreMeta, "kobench_version") is None:
                session.add(StoreMeta(key="kobench_version", value=_kobench_version()))


class Store:
    """A handle on the results store. Query helpers live in harness.store.records."""

    def __init__(self, url: str, engine: Engine, readonly: bool) -> None:
        self.url = url
        self.engine = engine
        self.readonly = readonly
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def session(self) -> Session:
        return self.sessions()

    def dispose(self) -> None:
        self.engine.dispose()

    def write_error(self, exc: DBAPIError) -> StoreError:
        """A write the database refused (disk full, file made read-only, lock held too long) as one clear line.
        Each task is written in one transaction, so what was stored before stays whole."""
        reason = (str(exc.orig) if exc.orig is not None else str(exc)).splitlines()[0]
        lowered = reason.lower()
        if "full" in lowered:
            fix = "Free disk space (or pass --db on another disk), then run the same command again: finished tasks "
            fix += "are reused"
        elif any(word in lowered for word in ("readonly", "read-only", "permission", "i/o error")):
            fix = "Make the database file and its -wal/-shm files writable (or pass another --db), then run the same "
            fix += "command again: finished tasks are reused"
        elif "locked" in lowered or "lock timeout" in lowered:  # SQLite's busy timeout, PostgreSQL's lock_timeout
            fix = "Another process held the store's write lock for over a minute; run again when it is done"
        else:
            fix = "Run `kobench db check` to verify the store, then the same command again"
        return StoreError(f"--db {self.display_url}: cannot write the results store ({reason}). {fix}")


def open_store(db: str | os.PathLike[str] | None = None, readonly: bool = False) -> Store:
    """Open (and create or migrate, unless read-only) the store at a path or SQLAlchemy URL."""
    url = normalize_url(db)
    path = sqlite_path(url)
    if path is not None:
        if readonly and not path.exists():
            raise StoreError(f"--db {path}: no such results store. Run `kobench run` first or pass another --db")
        if not readonly:
            if make_url(url).query.get("mode") == "ro":
                raise StoreError(f"--db {redact_url(url)}: opens the store read-only (mode=ro), but this command "
                                 "writes to it. Pass the plain path (or drop mode=ro) to write")
            _check_writable_sqlite(path)
    engine = _make_engine(url, readonly)
    try:
        if readonly:
            # a new PostgreSQL database exists before kobench ever wrote to it: empty is "no store yet"
            if not _check_schema(engine, url) and not inspect(engine).get_table_names():
                raise StoreError(f"--db {redact_url(url)}: no kobench results store there yet (the database is "
                                 "empty). Run `kobench run --db ...` first or pass another --db")
        else:
            migrate(engine, url)
            if path is not None:
                _use_wal(engine)
    except DatabaseError as exc:
        engine.dispose()
        reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
        raise StoreError(f"--db {redact_url(url)}: cannot open the results store ({reason})") from None
    except StoreError:
        engine.dispose()
        raise
    return Store(url, engine, readonly)
