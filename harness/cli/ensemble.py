"""`kobench ensemble`: hard voting over finished runs, stored so that it ranks like any model."""
from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.cli import app
from harness.cli.common import DbOption, JsonOption


@app.command()
def ensemble(runs: Annotated[str, typer.Option("--runs", help="Comma-separated ids of finished runs, e.g. 3,5,8")],
             task: Annotated[str, typer.Option("--task", "-t", help="The task whose answers vote")],
             db: DbOption = None, as_json: JsonOption = False) -> None:
    """Majority vote of several runs' stored answers on one task; ties go to the most accurate member."""
    from harness.ensemble import create_ensemble, parse_run_ids

    result = create_ensemble(parse_run_ids(runs), task, db)
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return
    console = Console()
    table = Table(title=escape(f"run {result.run_id}: {result.model} on {task} ({result.n} items, "
                               f"hardware {result.hardware})"))
    table.add_column("voter")
    table.add_column("accuracy", justify="right")
    for member in result.members:
        table.add_row(escape(f"run {member['run_id']}: {member['model']}"), f"{member['accuracy']:.4f}")
    table.add_row("[bold]ensemble[/]", f"[bold]{result.scores['acc']:.4f}[/]")
    for metric, value in result.scores.items():
        if metric.startswith("acc["):
            table.add_row(escape(f"  {metric}"), f"{value:.4f}")
    console.print(table)
