"""`kobench db check` and `kobench db backup`: verify the results store, copy it safely while it is in use."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from harness.cli import app
from harness.cli.common import DbOption, JsonOption

db_app = typer.Typer(no_args_is_help=True, help="Check or back up the results store.")
app.add_typer(db_app, name="db")


@db_app.command("check")
def check(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Integrity (SQLite's own checks) and consistency (scores vs samples, planned tasks of finished runs, reused
    results, orphan rows). Exit code 1 when anything is wrong."""
    from harness.store.maintenance import check_store

    report = check_store(db)
    if as_json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        console = Console(highlight=False)
        console.print(f"store {escape(report.db)}")
        console.print(f"integrity: {escape(report.integrity)}")
        if report.counts:
            console.print("rows: " + ", ".join(f"{n} {table}" for table, n in report.counts.items()))
        for note in report.notes:
            console.print(f"note: {escape(note)}", style="yellow")
        for problem in report.problems:
            console.print(f"problem: {escape(problem)}", style="red")
        console.print("ok: no problems found" if report.ok else f"{len(report.problems)} problem(s) found")
    if not report.ok:
        raise SystemExit(1)


@db_app.command("backup")
def backup(target: Annotated[Path, typer.Argument(help="The backup file to write (must not exist)")],
           db: DbOption = None, as_json: JsonOption = False) -> None:
    """A consistent copy of an SQLite store, safe while runs are writing to it (SQLite's online backup API)."""
    from harness.store.maintenance import backup_store

    info = backup_store(db, target)
    if as_json:
        print(json.dumps(info, ensure_ascii=False))
    else:
        Console(stderr=True, highlight=False).print(
            f"backed up {escape(info['db'])} ({info['runs']} runs) to {escape(info['backup'])} ({info['bytes']} bytes)")
