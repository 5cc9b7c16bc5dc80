"""`kobench hardware`: the hardware profiles a run can be budgeted against (built in and the user's own)."""
from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from harness.cli import app
from harness.cli.common import JsonOption

ProfilesOpt = Annotated[list[str] | None, typer.Option(
    "--profiles", help="YAML file of extra hardware profiles (repeatable; KOBENCH_PROFILES works too)")]


@app.command()
def hardware(profiles: ProfilesOpt = None, as_json: JsonOption = False) -> None:
    """List the hardware profiles: memory budget, bf16 support, full precision and where each is defined."""
    from harness.hardware import load_profiles

    rows = [{**p.to_dict(), "full_precision": p.full_precision} for p in load_profiles(profiles or []).values()]
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table(title="kobench hardware profiles (kobench run --hardware NAME)")
    for col in ("name", "kind", "GiB", "bf16", "precision", "description", "from"):
        table.add_column(col, justify="right" if col == "GiB" else "left", no_wrap=col != "description")
    for r in rows:
        table.add_row(r["name"], r["kind"], f"{r['memory_gib']:.2f}", "yes" if r["bf16"] else "no",
                      r["full_precision"], r["description"], r["source"])
    Console().print(table)
