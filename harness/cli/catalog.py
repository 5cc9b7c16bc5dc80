"""`kobench models` and `kobench tasks`: what can be evaluated, and on what."""
from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from harness.cli import app
from harness.cli.common import DbOption, JsonOption


@app.command()
def tasks(as_json: JsonOption = False) -> None:
    """Every task with its metrics, splits and item counts."""
    from harness.taskdata import read_records
    from harness.tasks import discover_tasks

    rows = []
    for name, info in sorted(discover_tasks().items()):
        counts = {}
        for split in info.splits:
            path = info.split_path(split)
            counts[split] = len(read_records(path, info.data_format)) if path and path.exists() else None
        rows.append({"task": name, "type": info.output_type, "main_metric": info.main_metric,
                     "metrics": info.metrics, "splits": counts, "version": info.version,
                     "description": info.description})
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table(title="kobench tasks")
    for col in ("task", "type", "main metric", "metrics", "items per split"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["task"], r["type"], r["main_metric"], ", ".join(r["metrics"]),
                      ", ".join(f"{k} {v if v is not None else 'missing'}" for k, v in r["splits"].items()))
    Console().print(table)


@app.command()
def models(db: DbOption = None, as_json: JsonOption = False) -> None:
    """The embedded model aliases (and whether they are converted yet) plus the models in the store."""
    from harness.models import EMBEDDED_MODELS
    from harness.paths import cache_dir
    from harness.store import normalize_url, open_store
    from harness.store.db import sqlite_path

    embedded = [{"alias": m.alias, "package": m.package, "description": m.description,
                 "converted": (cache_dir() / "models" / m.alias / "kobench_converted.json").exists()}
                for m in EMBEDDED_MODELS.values()]
    stored = []
    path = sqlite_path(normalize_url(db))
    if path is None or path.exists():
        from sqlalchemy import select

        from harness.store.schema import Model

        store = open_store(db, readonly=True)
        try:
            with store.session() as session:
                stored = [{"id": m.id, "name": m.name, "kind": m.kind, "source": m.source, "n_params": m.n_params,
                           "dtype": m.dtype, "quantization": m.quantization, "weights_hash": m.weights_hash,
                           "adapter_hash": m.adapter_hash} for m in session.scalars(select(Model).order_by(Model.id))]
        finally:
            store.dispose()
    if as_json:
        print(json.dumps({"embedded": embedded, "stored": stored}, ensure_ascii=False))
        return
    console = Console()
    table = Table(title="embedded models (from PyPI packages)")
    for col in ("alias", "package", "converted", "description"):
        table.add_column(col)
    for m in embedded:
        table.add_row(m["alias"], m["package"], "yes" if m["converted"] else "on first use", m["description"])
    console.print(table)
    if stored:
        table = Table(title="models in the results store")
        for col in ("id", "name", "kind", "source", "params", "dtype"):
            table.add_column(col)
        for m in stored:
            table.add_row(str(m["id"]), m["name"], m["kind"], m["source"], str(m["n_params"] or "-"), m["dtype"] or "-")
        console.print(table)
