"""`kobench data ...`: make and check task data files (synthetic markdown translation pairs, structure checks)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from harness.cli import app
from harness.errors import KobenchError

data_app = typer.Typer(no_args_is_help=True, help="Make and check task data files.")
app.add_typer(data_app, name="data")


def _is_test_split(path: Path) -> bool:
    """True for tasks/<task>/data/test* (the held-out evaluation data that synthetic pairs must never touch)."""
    from harness.paths import tasks_dir

    try:
        parts = path.resolve().relative_to(tasks_dir()).parts
    except ValueError:
        return False
    return len(parts) >= 3 and parts[1] == "data" and parts[-1].startswith("test")


@data_app.command("synth-md")
def synth_md(num: Annotated[int, typer.Option("--num", help="Number of records")] = 200,
             seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed writes the same file")] = 0,
             out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write")] = Path("synth_md.jsonl"),
             ) -> None:
    """Template-based Korean->English markdown pairs for TRAINING (chat-messages JSONL, ko_md_translation format)."""
    from harness.data.synth_md import generate_pairs, write_jsonl

    if num < 1:
        raise KobenchError(f"--num {num}: must be at least 1")
    if _is_test_split(out):
        raise KobenchError(f"--out {out}: is a task's test data; synthetic pairs are for training only. "
                           "Write them elsewhere (e.g. --out synth_md.jsonl) and pass that file to fine-tuning")
    records = generate_pairs(num, seed)
    write_jsonl(records, out)
    Console(stderr=True).print(f"wrote {len(records)} records (seed {seed}) to {out}")


@data_app.command("validate-md")
def validate_md(file: Annotated[Path, typer.Argument(help="ko_md_translation data file (chat-messages JSONL)")],
                min_overall_rate: Annotated[float, typer.Option(
                    "--min-overall-rate", help="Lowest acceptable mean md_preservation (and code_exact), 0-1")] = 0.98,
                show: Annotated[int, typer.Option("--show", help="How many of the worst items to list")] = 10,
                ) -> None:
    """Check that each reference keeps its source's markdown structure; exit 1 when the file is below the bar."""
    from harness.taskdata.md_translation import check_pairs

    if not 0 <= min_overall_rate <= 1:
        raise KobenchError(f"--min-overall-rate {min_overall_rate}: must be between 0 and 1")
    checks = check_pairs(file)
    md_rate = sum(c.md_preservation for c in checks) / len(checks)
    code = [c.code_exact for c in checks if c.code_exact is not None]
    code_rate = sum(code) / len(code) if code else None
    console = Console(soft_wrap=True)  # one line per item, however narrow the terminal
    code_text = "n/a (no code blocks)" if code_rate is None else f"{code_rate:.4f} over {len(code)} items"
    console.print(f"{file}: {len(checks)} items, md_preservation {md_rate:.4f}, code_exact {code_text}",
                  highlight=False, markup=False)
    failed = [name for name, rate in (("md_preservation", md_rate), ("code_exact", code_rate))
              if rate is not None and rate < min_overall_rate]
    if not failed:
        console.print(f"ok: at or above {min_overall_rate}", highlight=False, markup=False)
        return
    console.print(f"FAIL: {' and '.join(failed)} below {min_overall_rate}; worst items:", highlight=False, markup=False)
    worst = sorted(checks, key=lambda c: (c.md_preservation, c.code_exact if c.code_exact is not None else 1.0))
    for check in worst[:show]:
        if check.md_preservation == 1 and check.code_exact in (None, 1):
            break
        lost = ", ".join(f"{kind} {rate:.2f}" for kind, rate in check.per_element.items()
                         if rate is not None and rate < 1)
        code_part = "" if check.code_exact is None else f", code_exact {check.code_exact:.2f}"
        console.print(f"  {check.item_id} ({check.style}): md_preservation {check.md_preservation:.2f}{code_part}"
                      + (f" [{lost}]" if lost else ""), highlight=False, markup=False)
    raise SystemExit(1)  # typer.Exit(1) would be lost: main() runs the app with standalone_mode=False
