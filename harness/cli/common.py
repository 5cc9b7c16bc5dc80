"""Options and helpers shared by several commands."""
from __future__ import annotations

from typing import Annotated

import typer

DbOption = Annotated[str | None, typer.Option("--db", envvar="KOBENCH_DB",
                                              help="Results store: a path or an SQLAlchemy URL (default: results.db)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout")]


def split_csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]
