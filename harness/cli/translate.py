"""`kobench translate`: Korean markdown files into English with any model, code blocks passed through untouched."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.cli import app
from harness.cli.common import JsonOption
from harness.cli.run import AdapterOpt, DeviceOpt, ModelOpt


class _Bar:
    """translate_files events -> one rich bar over all model calls of all files."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.bar: Any = None

    def __call__(self, event: str, **info: Any) -> None:
        if event == "plan":
            self.bar = self.progress.add_task(f"{info['files']} file(s)", total=info["total"])
        elif event == "file":
            self.progress.update(self.bar, description=f"{info['path']} ({info['units']} sections)")
        elif event == "unit":
            self.progress.advance(self.bar)


@app.command()
def translate(model: ModelOpt,
              file: Annotated[Path | None, typer.Argument(help="Korean markdown file")] = None,
              adapter: AdapterOpt = None,
              out: Annotated[Path | None, typer.Option("--out", "-o", help="English output file (default: NAME.en.md)")]
              = None,
              input_dir: Annotated[Path | None, typer.Option("--input-dir", help="Translate every .md under DIR")]
              = None,
              output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Where --input-dir's files go")]
              = None,
              budget: Annotated[int, typer.Option("--budget", help="Source tokens per model call (sections are "
                                                  "split at headings to stay under it)")] = 512,
              max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Cap on tokens per call")] = 1536,
              device: DeviceOpt = "auto",
              online: Annotated[bool, typer.Option("--online", help="Allow downloading the model")] = False,
              as_json: JsonOption = False) -> None:
    """Translate markdown section by section (greedy), then print each output's md_preservation."""
    from harness.errors import KobenchError
    from harness.models import load_model, resolve_model, select_device
    from harness.runner import offline_env
    from harness.translate import Translator, plan_files, translate_files

    if budget < 16:
        raise KobenchError(f"--budget {budget}: too small to hold a sentence; use 128 or more")
    offline_env(online)
    pairs = plan_files(file, out, input_dir, output_dir)
    spec = resolve_model(model, adapter, online=online)
    device = select_device(device)
    console = Console(stderr=True)
    console.log(f"loading {spec.display_name} on {device}")
    loaded, tokenizer = load_model(spec, device, "auto", None, lambda msg: console.log(msg))
    translator = Translator(loaded, tokenizer, device, max_new_tokens=max_new_tokens)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        results = translate_files(pairs, translator, budget, progress=_Bar(progress))
    if as_json:
        print(json.dumps([{"source": str(r.source), "output": str(r.output), "md_preservation": r.md_preservation,
                           "code_exact": r.code_exact, "sections": r.units} for r in results], ensure_ascii=False))
        return
    table = Table(title=f"translated with {spec.display_name}")
    for col in ("source", "output", "sections", "md_preservation", "code_exact"):
        table.add_column(col, justify="right" if col in ("sections", "md_preservation", "code_exact") else "left")
    for r in results:
        table.add_row(str(r.source), str(r.output), str(r.units), f"{r.md_preservation:.3f}",
                      "-" if r.code_exact is None else f"{r.code_exact:.3f}")
    Console().print(table)
