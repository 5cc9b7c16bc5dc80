"""Crashes, full disks, read-only files, concurrency and hostile strings never lose or corrupt results.

The fault tests run the real `kobench run` in a subprocess on the reliability fixture tasks (a quick
multiple-choice task, then a deliberately slow generation task), wait until the first task is in the store, and
then kill the process, fill its disk or make its database read-only. See docs/reliability.md.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from harness.config import RunConfig
from harness.errors import StoreError
from harness.ranking import ranking
from harness.redact import redact, redact_value
from harness.runner import run
from harness.store import open_store, records
from harness.store.maintenance import backup_store, check_store
from harness.store.schema import Model, Run, Sample, Score, TaskResult, utcnow
from tests.conftest import FIXTURE_TASKS, FIXTURES, REPO, file_digest, kobench, last_json_line
from tests.conftest import sql as _sql

REL_TASKS = FIXTURES / "reliability_tasks"
REL_ENV = {"KOBENCH_TASKS_DIR": str(REL_TASKS)}
FIXTURE_ENV = {"KOBENCH_TASKS_DIR": str(FIXTURE_TASKS)}


# ---- helpers ------------------------------------------------------------------------------------------------------

def start_kobench(args: list[str], log_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    """`kobench ARGS` in the background, output to files (a pipe nobody reads could block it)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO, env={**os.environ, **env},
                            stdout=open(log_dir / "stdout", "w"), stderr=open(log_dir / "stderr", "w"))


def stored_tasks(db: Path, run_id: int = 1) -> dict[str, str]:
    """{task: status} of one run's stored task results, read the way a second process would."""
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return dict(conn.execute("SELECT task, status FROM task_results WHERE run_id = ?", (run_id,)).fetchall())
    except sqlite3.OperationalError:  # the schema is still being created
        return {}
    finally:
        conn.close()


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"kobench ended ({proc.returncode}) before the condition held")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for kobench")
        time.sleep(0.1)


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def run_args(model: Path, db: Path, tasks: str = "ko_rel_mc,ko_rel_slow") -> list[str]:
    return ["run", "--model", str(model), "--tasks", tasks, "--db", str(db), "--device", "cpu"]


def start_and_wait_for_first_task(model: Path, db: Path, tmp_path: Path) -> subprocess.Popen:
    """A run of the quick task then the slow one, returned once the quick task is stored (the slow one is running)."""
    proc = start_kobench(run_args(model, db), tmp_path / "logs", REL_ENV)
    wait_until(lambda: "ko_rel_mc" in stored_tasks(db), proc)
    assert proc.poll() is None and "ko_rel_slow" not in stored_tasks(db), "the slow task finished too soon"
    return proc


# ---- kill -9 mid-task -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_killed_run_is_marked_failed_its_finished_task_reused_and_kept_out_of_the_ranking(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOBENCH_TASKS_DIR", str(REL_TASKS))
    db = tmp_path / "results.db"
    proc = start_and_wait_for_first_task(tiny_model, db, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()  # reaped, as a shell would

    store = open_store(db, readonly=True)
    with store.session() as session:
        killed = session.get(Run, 1)
        assert (killed.status, killed.pid, killed.host) == ("running", proc.pid, socket.gethostname())
        first = session.scalar(select(TaskResult).where(TaskResult.run_id == 1))
    assert first.task == "ko_rel_mc" and stored_tasks(db) == {"ko_rel_mc": "done"}
    assert ranking(store) == []  # a run that is not done contributes nothing, not even its finished task
    store.dispose()

    again = kobench(*run_args(tiny_model, db), "--json", env=REL_ENV, check=True)
    result = last_json_line(again.stdout)
    assert result["status"] == "done" and result["run_id"] == 2

    store = open_store(db, readonly=True)
    with store.session() as session:
        killed = session.get(Run, 1)
        assert killed.status == "failed" and killed.ended_at is not None
        assert f"process {proc.pid}" in killed.error and "ended without finishing" in killed.error
        redo = {r.task: r for r in session.scalars(select(TaskResult).where(TaskResult.run_id == 2))}
        slow_samples = session.scalar(select(Sample.id).where(Sample.task_result_id == redo["ko_rel_slow"].id)
                                      .limit(1))
    assert redo["ko_rel_mc"].reused_from_id == first.id  # finished before the kill: reused
    assert redo["ko_rel_slow"].reused_from_id is None and redo["ko_rel_slow"].n == 8  # interrupted: redone
    assert slow_samples is not None
    rows = ranking(store)
    store.dispose()
    assert len(rows) == 1 and rows[0].run_ids == [2] and rows[0].n_tasks == 2
    assert first.id not in rows[0].task_result_ids.values()  # the ranking points at run 2's rows only
    assert rows[0].scores["ko_rel_mc"] == pytest.approx(result["scores"]["ko_rel_mc"]["acc"] * 100)
    assert check_store(db).ok


# ---- disk full / read-only while writing ------------------------------------------------------------------------

def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    return probe.returncode == 0


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that can be filled up in a test (needs root and mount rights, else the test skips)."""
    where = tmp_path / "tinydisk"
    if shutil.which("mount") is None or not _can_mount_tmpfs(where):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): no small disk to fill")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill_disk(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
        try:  # the last few bytes
            while True:
                handle.write(b"\0" * 512)
                handle.flush()
        except OSError:
            pass
    return filler


def _chattr_works(probe: Path) -> bool:
    probe.touch()
    ok = shutil.which("chattr") is not None and subprocess.run(["chattr", "+i", str(probe)],
                                                               capture_output=True).returncode == 0
    if ok:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    return ok


def _assert_store_intact_and_resumable(db: Path, model: Path, stderr: str, needle: str) -> None:
    lines = error_lines(stderr)
    assert len(lines) == 1 and needle in lines[0] and "finished tasks are reused" in lines[0], stderr
    assert "Traceback" not in stderr
    assert integrity(db) == "ok"
    assert stored_tasks(db) == {"ko_rel_mc": "done"}  # the task stored before the fault, whole
    report = check_store(db)
    assert report.ok, report.problems
    # the store is usable again: a new run reuses the stored task and marks the broken run failed
    result = run(RunConfig(model=str(model), tasks=["ko_rel_mc"], db=str(db), device="cpu"))
    assert result.status == "done" and result.reused == ["ko_rel_mc"]
    store = open_store(db, readonly=True)
    with store.session() as session:
        assert session.get(Run, 1).status == "failed"
    store.dispose()


@pytest.mark.slow
def test_disk_full_while_writing_a_task(tiny_model: Path, tiny_disk: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOBENCH_TASKS_DIR", str(REL_TASKS))
    db = tiny_disk / "results.db"
    proc = start_and_wait_for_first_task(tiny_model, db, tmp_path)
    filler = fill_disk(tiny_disk)
    assert proc.wait(timeout=300) == 2
    filler.unlink()
    _assert_store_intact_and_resumable(db, tiny_model, (tmp_path / "logs" / "stderr").read_text(),
                                       "database or disk is full")


@pytest.mark.slow
def test_database_made_read_only_while_writing(tiny_model: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if not _chattr_works(tmp_path / "probe"):
        pytest.skip("chattr +i is not available here (needs root and CAP_LINUX_IMMUTABLE on this filesystem)")
    monkeypatch.setenv("KOBENCH_TASKS_DIR", str(REL_TASKS))
    db = tmp_path / "results.db"
    proc = start_and_wait_for_first_task(tiny_model, db, tmp_path)
    frozen = [p for p in (db, db.with_name(db.name + "-wal")) if p.exists()]
    subprocess.run(["chattr", "+i", *map(str, frozen)], check=True)  # root ignores chmod; not the immutable flag
    try:
        assert proc.wait(timeout=300) == 2
    finally:
        subprocess.run(["chattr", "-i", *map(str, frozen)], check=True)
    _assert_store_intact_and_resumable(db, tiny_model, (tmp_path / "logs" / "stderr").read_text(),
                                       "writable")


def test_immutable_database_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """Root ignores file modes, not the immutable flag. (The `?mode=ro` URL case is in tests/test_bad_input.py.)"""
    if not _chattr_works(tmp_path / "probe"):
        pytest.skip("chattr +i is not available here (needs root and CAP_LINUX_IMMUTABLE on this filesystem)")
    db = tmp_path / "results.db"
    open_store(db).dispose()
    before = file_digest(db)
    subprocess.run(["chattr", "+i", str(db)], check=True)
    try:
        with pytest.raises(StoreError, match="the file is read-only. Make it writable"):
            open_store(db)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert file_digest(db) == before


# ---- stale runs and the heartbeat ---------------------------------------------------------------------------------

def _running_run(store, pid: int, host: str, started_ago: timedelta = timedelta(0),  # noqa: ANN001
                 silent_for: timedelta = timedelta(0)) -> int:
    model_id = records.get_or_create_model(store, f"m-{pid}-{host}", name="m", source="test:m")
    run_id = records.create_run(store, model_id)
    now = utcnow()
    with store.session() as session, session.begin():
        row = session.get(Run, run_id)
        row.pid, row.host = pid, host
        row.started_at, row.heartbeat_at = now - started_ago, now - silent_for
    return run_id


def test_stale_runs_dead_zombie_reused_pid_and_silent(db_path: Path) -> None:
    store = open_store(db_path)
    here = socket.gethostname()
    live = subprocess.Popen(["sleep", "60"])
    zombie = subprocess.Popen(["sleep", "0"])
    time.sleep(0.5)  # the zombie exits; it is never waited for, so it stays a zombie
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        time.sleep(1.1)  # runs below "start" after the live process did
        ids = {
            "alive": _running_run(store, live.pid, here),
            "dead": _running_run(store, dead.pid, here),
            "zombie": _running_run(store, zombie.pid, here),
            # the pid is alive, but that process started long after the run: the pid was reused
            "reused_pid": _running_run(store, live.pid, here, started_ago=timedelta(hours=1)),
            "other_host_recent": _running_run(store, 1, "elsewhere", silent_for=timedelta(minutes=2)),
            "other_host_silent": _running_run(store, 1, "elsewhere", silent_for=records.STALE_AFTER * 2),
        }
        stale = records.mark_stale_runs(store)
    finally:
        live.kill()
        live.wait()
        zombie.wait()
    assert sorted(stale) == sorted(ids[k] for k in ("dead", "zombie", "reused_pid", "other_host_silent"))
    with store.session() as session:
        status = {name: session.get(Run, run_id).status for name, run_id in ids.items()}
        silent_error = session.get(Run, ids["other_host_silent"]).error
    store.dispose()
    assert status["alive"] == status["other_host_recent"] == "running"
    assert "no heartbeat since" in silent_error


def test_heartbeat_beats_while_a_task_runs(tiny_model: Path, fixture_tasks: Path, db_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "HEARTBEAT_EVERY_S", 0.05)
    seen = []

    def heartbeats() -> list:
        store = open_store(db_path, readonly=True)
        with store.session() as session:
            beats = session.scalars(select(Run.heartbeat_at).where(Run.status == "running")).all()
        store.dispose()
        return beats

    def progress(event: str, **info: object) -> None:
        if event == "task_start":  # the main thread is busy "running the task": only the heartbeat thread writes
            seen.append(heartbeats())
            time.sleep(0.5)
            seen.append(heartbeats())

    result = run(RunConfig(model=str(tiny_model), tasks=["ko_fixture_mc"], db=str(db_path), device="cpu"),
                 progress=progress)
    assert result.status == "done"
    (before,), (after,) = seen
    assert after - before >= timedelta(seconds=0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith("kobench-heartbeat")]  # stopped with the run


# ---- db check / db backup -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_store(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with one finished run of both fixture tasks and a second run that reused them."""
    db = tmp_path_factory.mktemp("check") / "results.db"
    for _ in range(2):
        kobench("run", "--model", str(tiny_model), "--tasks", "ko_fixture_mc,ko_fixture_gen", "--db", str(db),
                "--device", "cpu", env=FIXTURE_ENV, check=True)
    return db


@pytest.fixture()
def store_copy(finished_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.db"
    shutil.copy(finished_store, copy)
    return copy


def db_check(db: Path) -> tuple[int, dict]:
    proc = kobench("db", "check", "--db", str(db), "--json", env=FIXTURE_ENV)
    return proc.returncode, last_json_line(proc.stdout)


def test_db_check_passes_a_clean_store(finished_store: Path) -> None:
    before = file_digest(finished_store)
    code, report = db_check(finished_store)
    assert code == 0 and report["ok"] and report["integrity"] == "ok" and report["problems"] == []
    assert report["counts"] == {"runs": 2, "task_results": 4, "scores": 10, "samples": 10}
    assert report["notes"] == []  # the fixture tasks are known, so their overall scores were checked too
    assert file_digest(finished_store) == before


def test_db_check_finds_a_score_that_is_not_the_mean_of_its_samples(store_copy: Path) -> None:
    _sql(store_copy, "UPDATE scores SET value = value + 0.25 WHERE metric = 'acc' AND task_result_id = 1")
    code, report = db_check(store_copy)
    assert code == 1
    assert any("ko_fixture_mc, run 1): acc =" in p and "samples average" in p for p in report["problems"])
    # run 2 reused that result: its copied scores no longer match their source either
    assert any("its scores differ from those of result 1" in p for p in report["problems"])


def test_db_check_finds_a_per_category_score_off_its_samples(store_copy: Path) -> None:
    _sql(store_copy, "UPDATE scores SET value = 0.123 WHERE metric LIKE 'acc[category=%' AND task_result_id = 1")
    code, report = db_check(store_copy)
    assert code == 1 and any("acc[category=" in p and "= 0.123" in p for p in report["problems"])


def test_db_check_finds_missing_tasks_orphan_samples_and_bad_counts(store_copy: Path) -> None:
    conn = sqlite3.connect(store_copy)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("DELETE FROM task_results WHERE run_id = 1 AND task = 'ko_fixture_gen'")
    conn.execute("UPDATE task_results SET n = 5 WHERE run_id = 1 AND task = 'ko_fixture_mc'")
    conn.commit()
    conn.close()
    code, report = db_check(store_copy)
    problems = "\n".join(report["problems"])
    assert code == 1
    assert "run 1 is done but has no result for its planned task ko_fixture_gen" in problems
    assert "4 samples belong to task result 2, which does not exist" in problems  # ko_fixture_gen has 4 items
    assert "scores belong to task result 2, which does not exist" in problems
    assert "n = 5 but 6 samples are stored" in problems
    assert "is reused from 2, which is missing" in problems
    assert "integrity: samples row" in problems  # SQLite's foreign_key_check agrees


def test_db_check_finds_damaged_pages(store_copy: Path) -> None:
    data = bytearray(store_copy.read_bytes())
    page = 4096
    for offset in range(2 * page, len(data), page):  # scribble over the b-tree header of every page but the schema's
        data[offset:offset + 12] = b"\xa5" * 12
    store_copy.write_bytes(bytes(data))
    code, report = db_check(store_copy)
    assert code == 1 and report["integrity"] != "ok" and report["problems"]


def test_db_backup_is_a_consistent_copy_while_a_writer_holds_a_transaction(finished_store: Path,
                                                                           tmp_path: Path) -> None:
    writer = sqlite3.connect(finished_store, isolation_level=None, timeout=30)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE runs SET error = 'uncommitted' WHERE id = 1")
    try:
        target = tmp_path / "backup.db"
        proc = kobench("db", "backup", str(target), "--db", str(finished_store), "--json", env=FIXTURE_ENV)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert proc.returncode == 0, proc.stderr
    assert last_json_line(proc.stdout)["runs"] == 2
    assert integrity(target) == "ok" and not target.with_name("backup.db-wal").exists()
    conn = sqlite3.connect(target)
    assert conn.execute("SELECT error FROM runs WHERE id = 1").fetchone()[0] is None  # the snapshot is committed
    conn.close()
    code, report = db_check(target)
    assert code == 0 and report["counts"]["samples"] == 10
    again = kobench("db", "backup", str(target), "--db", str(finished_store), env=FIXTURE_ENV)
    assert again.returncode == 2 and "already exists" in error_lines(again.stderr)[0]
    with pytest.raises(StoreError, match="pg_dump"):
        backup_store("postgresql+psycopg://kb:pw@127.0.0.1:1/kobench", tmp_path / "pg.db")


# ---- safety: trust_remote_code, credentials, SQL injection ---------------------------------------------------------

def remote_code_model(directory: Path, marker: Path) -> Path:
    """A model directory whose config asks for custom code; that code, if ever imported, writes `marker`."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(
        '{"model_type": "kobench_custom", "architectures": ["CustomModel"], '
        '"auto_map": {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel", '
        '"AutoTokenizer": ["custom.CustomTokenizer", null]}}')
    (directory / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "CustomTokenizer", "auto_map": {"AutoTokenizer": ["custom.CustomTokenizer", null]}}')
    (directory / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('executed')\n")
    return directory


def test_remote_code_never_runs_without_the_flag(tmp_path: Path) -> None:
    marker = tmp_path / "remote-code-ran"
    model = remote_code_model(tmp_path / "custom-model", marker)
    db = tmp_path / "results.db"
    proc = kobench("run", "--model", str(model), "--tasks", "ko_fixture_mc", "--db", str(db), "--device", "cpu",
                   env=FIXTURE_ENV)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and "--trust-remote-code" in lines[0], proc.stderr
    assert not marker.exists() and not db.exists()


@pytest.mark.parametrize("flag", [False, True])
def test_trust_remote_code_is_off_by_default_and_recorded(flag: bool, tiny_model: Path, fixture_tasks: Path,
                                                         db_path: Path) -> None:
    config = RunConfig(model=str(tiny_model), tasks=["ko_fixture_mc"], db=str(db_path), device="cpu", limit=2,
                       **({"trust_remote_code": True} if flag else {}))
    result = run(config)
    store = open_store(db_path, readonly=True)
    with store.session() as session:
        stored = session.get(Run, result.run_id).config
    store.dispose()
    assert stored["trust_remote_code"] is flag


def test_redaction_of_tokens_urls_and_secret_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_EnvironmentToken0123456789")
    monkeypatch.setenv("MY_SERVICE_API_KEY", "plain-secret-value")
    assert redact("postgresql+psycopg://kb:hunter2@db:5432/x") == "postgresql+psycopg://kb:***@db:5432/x"
    assert redact("token hf_AbCdEfGhIjKlMnOpQrSt and hf_EnvironmentToken0123456789") == "token hf_*** and ***"
    assert redact("GET https://h/x?api_key=abc123&n=1") == "GET https://h/x?api_key=***&n=1"
    assert redact("Authorization: Bearer abcdef123456") == "Authorization: Bearer ***"
    assert redact("used plain-secret-value here") == "used *** here"
    # ordinary text is left alone
    for plain in ("prompt_tokens: 12", "max tokens: 3", "sqlite:////tmp/results.db", "hf_hub offline", "서울은"):
        assert redact(plain) == plain
    assert redact_value({"password": "x1", "hf_token": "abc", "pad_token": "<pad>", "max_tokens": 5,
                         "nested": ["https://u:p4ss@h/y"]}) == {
        "password": "***", "hf_token": "***", "pad_token": "<pad>", "max_tokens": 5, "nested": ["https://u:***@h/y"]}


def test_no_credentials_in_the_store_file(tiny_model: Path, fixture_tasks: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    token = "hf_FakeTokenForKobenchTests0123"
    monkeypatch.setenv("HF_TOKEN", token)
    model = tmp_path / token / "tiny-llama"  # a model path that carries the token
    shutil.copytree(tiny_model, model)
    db = tmp_path / "results.db"
    result = run(RunConfig(model=str(model), tasks=["ko_fixture_mc"], db=str(db), device="cpu", limit=2))
    store = open_store(db)
    records.finish_run(store, result.run_id, "failed",
                       f"OSError: cannot reach postgresql://kb:S3cretPw@db/x with Bearer abcdefgh12345 ({token})")
    with store.session() as session:
        run_row = session.get(Run, result.run_id)
        config, error = run_row.config, run_row.error
        source = session.get(Model, run_row.model_id).source
    store.dispose()
    assert config["model"] == str(tmp_path / "***" / "tiny-llama") and "***" in source
    assert "S3cretPw" not in error and "abcdefgh12345" not in error
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("results.db*") if p.is_file())
    for secret in (token, "S3cretPw", "abcdefgh12345"):
        assert secret.encode() not in stored


def test_no_database_password_in_a_postgresql_store(pg_server, tiny_model: Path,  # noqa: ANN001
                                                    fixture_tasks: Path) -> None:
    from tests.pg import PASSWORD, PASSWORD_ROLE

    name = pg_server.create_database()
    pg_server.execute(f'ALTER DATABASE "{name}" OWNER TO {PASSWORD_ROLE}')
    url = pg_server.url(name, user=PASSWORD_ROLE, password=PASSWORD)
    try:
        result = run(RunConfig(model=str(tiny_model), tasks=["ko_fixture_mc"], db=url, device="cpu", limit=2))
        store = open_store(url, readonly=True)
        with store.session() as session:
            config = session.get(Run, result.run_id).config
            # every row of every table, as text
            dumped = "".join(str(row) for table in ("models", "runs", "task_results", "scores", "samples",
                                                      "kobench_meta")
                             for row in session.execute(text(f"SELECT * FROM {table}")))
        store.dispose()
    finally:
        pg_server.drop_database(name)
    assert config["db"] == url.replace(PASSWORD, "***")
    assert PASSWORD not in dumped and "tiny-llama" in dumped


def test_credentials_in_error_output_are_masked(tmp_path: Path) -> None:
    proc = kobench("run", "--model", "https://kb:S3cretPw@models.example/tiny", "--tasks", "ko_fixture_mc",
                   "--db", str(tmp_path / "r.db"), env={**FIXTURE_ENV, "HF_TOKEN": "hf_EnvTokenKobench012345"})
    assert proc.returncode == 2 and "S3cretPw" not in proc.stderr and "kb:***@" in proc.stderr
    proc = kobench("show", "--db", "postgresql+psycopg://kb:S3cretPw@127.0.0.1:1/kobench", env=FIXTURE_ENV)
    assert proc.returncode == 2 and "S3cretPw" not in proc.stderr + proc.stdout, proc.stderr


HOSTILE = ["x'); DROP TABLE runs;--", '"; DELETE FROM samples; --', "Robert'); DROP TABLE samples;-- 🙂 [bold]"]


def test_injection_like_strings_are_stored_verbatim(tiny_model: Path, fixture_tasks: Path, tmp_path: Path) -> None:
    model = tmp_path / HOSTILE[0] / HOSTILE[1]  # a local model directory with those names
    shutil.copytree(tiny_model, model)
    items = [{"id": HOSTILE[0], "question": HOSTILE[1], "choices": ["한국", HOSTILE[2]], "label": 0,
              "category": HOSTILE[0]},
             {"id": HOSTILE[2], "question": HOSTILE[0], "choices": ["한국", HOSTILE[1]], "label": 1, "category": "지리"}]
    data = tmp_path / "hostile.jsonl"
    data.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    db = tmp_path / "results.db"
    result = run(RunConfig(model=str(model), tasks=["ko_fixture_mc"], db=str(db), device="cpu",
                           data={"ko_fixture_mc": str(data)}))
    assert result.status == "done"
    store = open_store(db, readonly=True)
    with store.session() as session:
        tables = set(session.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars())
        model_row = session.scalar(select(Model))
        samples = session.scalars(select(Sample).order_by(Sample.doc_id)).all()
        n_scores = len(session.scalars(select(Score)).all())
    store.dispose()
    assert {"runs", "samples", "scores", "task_results", "models"} <= tables
    assert model_row.name == HOSTILE[1] and model_row.source == f"local:{model}"
    assert [s.item_id for s in samples] == [HOSTILE[0], HOSTILE[2]]
    assert HOSTILE[1] in samples[0].prompt and HOSTILE[0] in samples[1].prompt
    assert n_scores == 1 + 2  # acc + acc for each of the two categories
    shown = last_json_line(kobench("show", "--json", "--db", str(db), env=FIXTURE_ENV, check=True).stdout)
    assert shown[0]["model"] == HOSTILE[1]
    assert check_store(db).ok


# ---- kill -9 during `kobench finetune` ----------------------------------------------------------------------------

@pytest.mark.slow
def test_killed_finetune_resumes_from_its_last_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    import csv

    data = tmp_path / "qa.csv"
    data.write_text("question,answer\n" + "".join(f"질문 {i}: 대한민국의 수도는?,서울 {i}\n" for i in range(12)),
                    encoding="utf-8")
    output = tmp_path / "adapter"
    args = ["finetune", "--model", str(tiny_model), "--data", str(data), "--output", str(output), "--preset", "fast",
            "--max-steps", "12", "--eval-steps", "2", "--max-length", "64", "--device", "cpu", "--no-eval"]
    checkpoints = output / "checkpoints"
    proc = start_kobench(args, tmp_path / "logs", {})
    wait_until(lambda: (checkpoints / "checkpoint-4" / "trainer_state.json").exists(), proc, timeout=400)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (output / "kobench_adapter.json").exists()
    done_before = max(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*")
                      if (p / "trainer_state.json").exists())

    again = kobench(*args, check=True)
    assert f"resuming the interrupted fine-tune from checkpoint-{done_before}" in again.stdout + again.stderr
    meta = json.loads((output / "kobench_adapter.json").read_text())
    assert meta["training"]["steps"] == 12
    with open(output / "loss_log.csv", encoding="utf-8") as handle:
        train_steps = [int(row["step"]) for row in csv.DictReader(handle) if row["train_loss"]]
    assert train_steps == list(range(1, 13))  # every step's loss once: steps past the checkpoint were not kept twice
