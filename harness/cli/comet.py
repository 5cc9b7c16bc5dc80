"""`kobench comet setup` and `kobench comet score`: COMET for stored ko_md_translation runs, in its own venv."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from harness.cli import app
from harness.cli.common import DbOption, JsonOption

comet_app = typer.Typer(no_args_is_help=True,
                        help="COMET scores for ko_md_translation runs (unbabel-comet in a separate venv).")
app.add_typer(comet_app, name="comet")

VenvOpt = Annotated[Path | None, typer.Option("--venv", help="COMET venv (default: KOBENCH_COMET_VENV or "
                                                             "~/.cache/kobench/comet-venv)")]


@comet_app.command("setup")
def setup(venv: VenvOpt = None,
          force: Annotated[bool, typer.Option("--force", help="Recreate the venv even if it works")] = False) -> None:
    """Create the COMET venv (python -m venv + pip install unbabel-comet; the CPU torch wheel when needed)."""
    from harness.comet import setup_venv

    console = Console(stderr=True)
    setup_venv(venv, force=force, log=lambda msg: console.log(msg))


@comet_app.command("score")
def score(run_id: Annotated[int, typer.Option("--run", help="Run id with a ko_md_translation result")],
          model: Annotated[str, typer.Option("--model", help="COMET checkpoint directory or a Hugging Face id in "
                                                             "the local cache")] = "Unbabel/wmt22-comet-da",
          db: DbOption = None,
          venv: VenvOpt = None,
          batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
          gpus: Annotated[int, typer.Option("--gpus", help="GPUs for COMET (0: CPU)")] = 0,
          as_json: JsonOption = False) -> None:
    """Score a stored run's translations with COMET and store a `comet` score row (exit 1 when not computed)."""
    from harness.comet import score_run
    from harness.store import open_store

    open_store(db, readonly=True).dispose()  # a missing store is an error here, not a new empty one
    store = open_store(db)
    try:
        result = score_run(store, run_id, model=model, venv=venv, batch_size=batch_size, gpus=gpus)
    finally:
        store.dispose()
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    elif result.status == "ok":
        Console().print(f"run {run_id} {result.task}: comet {result.system_score:.4f} over {result.n} samples "
                        f"({model}), stored", highlight=False)
    if result.status != "ok":
        Console(stderr=True).print(f"COMET not computed for run {run_id}: {result.reason}", highlight=False,
                                   soft_wrap=True)
        raise SystemExit(1)  # typer.Exit(1) would be lost: main() runs the app with standalone_mode=False
