"""`kobench show` and `kobench export`: the ranking and the raw record."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from harness.cli import app
from harness.cli.common import DbOption, JsonOption
from harness.errors import KobenchError
from harness.store import open_store


def print_scores(console: Console, result: Any) -> None:
    if result.scores:
        table = Table(title=f"run {result.run_id}: {result.model} ({result.status}, {result.wall_s:.1f}s)")
        table.add_column("task")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("n", justify="right")
        for task, metrics in result.scores.items():
            for metric, value in metrics.items():
                table.add_row(task, metric, "n/a" if value is None else f"{value:.4f}", str(result.n.get(task)))
        console.print(table)
    if result.error:  # budget_exceeded: what was estimated or which task ran out of memory
        console.print(f"run {result.run_id}: {result.error}", style="yellow", highlight=False, soft_wrap=True)


def ranking_table(rows: list[Any]) -> Table:
    tasks = sorted({t for r in rows for t in r.scores})
    table = Table(title="kobench ranking (main metric per task, 0-100)")
    for col in ("rank", "model", "hardware", "precision", *tasks, "avg", "tasks", "params", "peak MB", "gen tok/s"):
        table.add_column(col, justify="right" if col not in ("model", "hardware", "precision") else "left")
    for r in rows:
        name = r.model + (f"  [dim](base {r.base_model})[/]" if r.base_model else "")
        cells = [f"{r.scores[t]:.1f}" if r.scores.get(t) is not None else "-" for t in tasks]
        table.add_row(str(r.rank), name, r.hardware, precision_label(r.dtype, r.quantization), *cells,
                      "-" if r.average is None else f"{r.average:.1f}",
                      str(r.n_tasks), _human(r.n_params), "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f}",
                      "-" if r.gen_tokens_per_s is None else f"{r.gen_tokens_per_s:.1f}")
    return table


def precision_label(dtype: str | None, quantization: str | None) -> str:
    """nf4 / int8 when quantized, else the short dtype (bf16, fp16, fp32)."""
    if quantization:
        return quantization
    short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    return short.get(dtype or "", dtype or "-")


def _human(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def show_ranking(db: str | None, hardware: str | None, as_json: bool, console: Console,
                 only_runs: set[int] | None = None, tasks: list[str] | None = None) -> None:
    from harness.ranking import ranking

    store = open_store(db, readonly=True)
    try:
        rows = ranking(store, hardware=hardware, tasks=tasks)
    finally:
        store.dispose()
    if only_runs is not None:
        rows = [r for r in rows if only_runs & set(r.run_ids)]
        for i, r in enumerate(rows, start=1):
            r.rank = i
    if as_json:
        print(json.dumps([r.to_dict() for r in rows], ensure_ascii=False))
        return
    if not rows:
        console.print("no finished runs in the store yet: run `kobench run --model ...` first")
        return
    table = ranking_table(rows)
    # piped output (make demo, CI logs) gets rich's 80-column default, which truncates every cell: use the width the
    # table needs instead
    if not console.is_terminal:
        console = Console(width=400, file=console.file)
    console.print(table)


@app.command()
def show(db: DbOption = None,
         hardware: Annotated[str | None, typer.Option("--hardware", help="Only this hardware profile")] = None,
         as_json: JsonOption = False) -> None:
    """The ranking: one row per model + adapter + hardware profile."""
    show_ranking(db, hardware, as_json, Console())


@app.command()
def export(db: DbOption = None,
           fmt: Annotated[str, typer.Option("--format", help="csv or json (scores); jsonl (samples)")] = "csv",
           run_id: Annotated[int | None, typer.Option("--run", help="Only this run")] = None,
           samples: Annotated[bool, typer.Option("--samples", help="Export per-sample rows of --run")] = False,
           output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file instead of stdout")] = None,
           ) -> None:
    """Export scores (csv/json) or one run's samples (jsonl)."""
    from harness.store import export as store_export

    store = open_store(db, readonly=True)
    try:
        if samples:
            if run_id is None:
                raise KobenchError("--samples needs --run ID (see `kobench show --json` for run ids)")
            if fmt != "jsonl":
                raise KobenchError(f"--format {fmt}: samples export as jsonl; pass --format jsonl")
            lines = [json.dumps(row, ensure_ascii=False) for row in store_export.sample_rows(store, run_id)]
            text = "\n".join(lines) + ("\n" if lines else "")
        else:
            rows = store_export.score_rows(store, run_id)
            if fmt == "json":
                text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
            elif fmt == "csv":
                buffer = io.StringIO()
                writer = csv.DictWriter(buffer, fieldnames=store_export.SCORE_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
                text = buffer.getvalue()
            else:
                raise KobenchError(f"--format {fmt}: scores export as csv or json (jsonl is for --samples)")
    finally:
        store.dispose()
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
