"""`kobench run` and `kobench screen`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from harness.cli import app
from harness.cli.common import DbOption, JsonOption, split_csv
from harness.config import RunConfig, parse_data_overrides
from harness.errors import KobenchError

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Alias (gemma3-270m, smollm2-135m), HF id or local path")]
AdapterOpt = Annotated[str | None, typer.Option("--adapter", help="PEFT LoRA adapter directory for the model")]
TasksOpt = Annotated[str | None, typer.Option("--tasks", "-t", help="Comma-separated task names")]
SuiteOpt = Annotated[str | None, typer.Option("--suite", help="Named suite: full or quick")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="At most N items per task (a fixed stratified subset)")]
HardwareOpt = Annotated[str, typer.Option("--hardware", help="Hardware profile (see `kobench hardware`): memory "
                                          "budget checked before loading and enforced while running")]
DataOpt = Annotated[list[str] | None, typer.Option("--data", help="TASK=PATH: replace a task's test data")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or auto")]
BatchOpt = Annotated[str, typer.Option("--batch-size", help="Batch size or 'auto'")]


def build_config(model: str, adapter: str | None, tasks: str | None, suite: str | None, limit: int | None,
                 hardware: str, db: str | None, data: list[str] | None, device: str, batch_size: str, force: bool,
                 online: bool, trust_remote_code: bool, chat_template: str, num_fewshot: int | None,
                 categories: str | None, seed: int, refined: bool, quantize: str = "none",
                 profiles: list[str] | None = None) -> RunConfig:
    return RunConfig(model=model, adapter=adapter, tasks=split_csv(tasks), suite=suite, limit=limit,
                     hardware=hardware, db=db, data=parse_data_overrides(data or []), device=device,
                     batch_size=batch_size, force=force, online=online, trust_remote_code=trust_remote_code,
                     chat_template=chat_template, num_fewshot=num_fewshot, categories=split_csv(categories),
                     seed=seed, refined=refined, quantize=quantize, profiles=list(profiles or []))


class RichProgress:
    """Turns runner events into a rich progress display (a spinner while loading, a bar over tasks)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console,
                                 transient=False)
        self.bar: Any = None

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: str, **info: Any) -> None:
        if event == "status":
            self.console.log(info["text"])
            return
        if self.bar is None and "total" in info:
            self.bar = self.progress.add_task("tasks", total=info["total"])
        if event == "task_start":
            self.progress.update(self.bar, description=f"{info['task']} ({info['n']} items)")
        elif event == "task_done":
            main = info.get("main")
            shown = f"{main:.4f}" if isinstance(main, float) else "n/a"
            self.console.log(f"{info['task']}: main metric {shown} in {info['wall_s']:.1f}s")
            self.progress.advance(self.bar)
        elif event == "task_reused":
            self.console.log(f"{info['task']}: reused from run {info['source_run']} (same model, data and config)")
            self.progress.advance(self.bar)


def execute(config: RunConfig, console: Console) -> Any:
    from harness.runner import run as run_suite

    with RichProgress(console) as progress:
        return run_suite(config, progress=progress)


@app.command()
def run(model: ModelOpt, adapter: AdapterOpt = None, tasks: TasksOpt = None, suite: SuiteOpt = None,
        limit: LimitOpt = None, hardware: HardwareOpt = "unspecified", db: DbOption = None, data: DataOpt = None,
        device: DeviceOpt = "auto", batch_size: BatchOpt = "auto",
        force: Annotated[bool, typer.Option("--force", help="Recompute tasks even if the store has them")] = False,
        online: Annotated[bool, typer.Option("--online", help="Allow Hugging Face hub downloads")] = False,
        trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
        chat_template: Annotated[str, typer.Option("--chat-template", help="auto, on or off")] = "auto",
        num_fewshot: Annotated[int | None, typer.Option("--num-fewshot")] = None,
        categories: Annotated[str | None, typer.Option("--categories", help="Only items of these categories")] = None,
        seed: Annotated[int, typer.Option("--seed")] = 1234,
        refined: Annotated[bool, typer.Option("--refined", help="Clean conversations first (ko_context_inference)")] = False,
        quantize: Annotated[str, typer.Option("--quantize", help="none, int8, nf4, or auto: int8/nf4 only when "
                                              "full precision does not fit --hardware")] = "none",
        profiles: Annotated[list[str] | None, typer.Option("--profiles", help="YAML file of extra hardware "
                                                           "profiles (repeatable; or KOBENCH_PROFILES)")] = None,
        as_json: JsonOption = False) -> None:
    """Evaluate one model (or model + adapter) on tasks and store every result.

    Exit code 3 when the model does not fit --hardware (the run is stored with status budget_exceeded)."""
    from harness.hardware import BUDGET_EXCEEDED_EXIT_CODE

    config = build_config(model, adapter, tasks, suite, limit, hardware, db, data, device, batch_size, force, online,
                          trust_remote_code, chat_template, num_fewshot, categories, seed, refined, quantize, profiles)
    console = Console(stderr=as_json)
    result = execute(config, console)
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        from harness.cli.results import print_scores

        print_scores(console, result)
    if result.status == "budget_exceeded":
        raise SystemExit(BUDGET_EXCEEDED_EXIT_CODE)  # typer.Exit's code would be lost (standalone_mode=False)


def load_candidates(path: Path) -> list[dict[str, Any]]:
    """A YAML list of candidates: `- model: NAME` with optional per-model settings (adapter, batch_size, ...)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise KobenchError(f"--candidates {path}: cannot read ({exc}). Expected a YAML list of {{model: NAME}}") from None
    if isinstance(data, dict) and "candidates" in data:
        data = data["candidates"]
    if not isinstance(data, list) or not all(isinstance(c, dict) and "model" in c for c in data):
        raise KobenchError(f"--candidates {path}: expected a YAML list of mappings with a 'model' key, "
                           "e.g. '- model: gemma3-270m'")
    allowed = {"model", "adapter", "batch_size", "device", "chat_template", "num_fewshot", "trust_remote_code"}
    for i, cand in enumerate(data, start=1):
        unknown = set(cand) - allowed
        if unknown:
            raise KobenchError(f"--candidates {path}: candidate {i} has unknown key(s) {', '.join(sorted(unknown))}; "
                               f"allowed: {', '.join(sorted(allowed))}")
    return data


@app.command()
def screen(models: Annotated[str | None, typer.Option("--models", help="Comma-separated models")] = None,
           candidates: Annotated[Path | None, typer.Option("--candidates", help="YAML file of candidates")] = None,
           tasks: TasksOpt = None, suite: SuiteOpt = None, limit: LimitOpt = None,
           hardware: HardwareOpt = "unspecified", db: DbOption = None, data: DataOpt = None,
           device: DeviceOpt = "auto", batch_size: BatchOpt = "auto",
           force: Annotated[bool, typer.Option("--force")] = False,
           online: Annotated[bool, typer.Option("--online")] = False,
           as_json: JsonOption = False) -> None:
    """Zero-shot screening: run every candidate on the same suite, then print their ranking."""
    if bool(models) == bool(candidates):
        raise KobenchError("pass either --models M1,M2 or --candidates FILE.yaml")
    cands = [{"model": m} for m in split_csv(models)] if models else load_candidates(candidates)
    console = Console(stderr=as_json)
    configs = []
    for cand in cands:  # validate every candidate before running any
        config = build_config(cand["model"], cand.get("adapter"), tasks, suite, limit, hardware, db, data,
                              cand.get("device", device), str(cand.get("batch_size", batch_size)), force, online,
                              bool(cand.get("trust_remote_code", False)), cand.get("chat_template", "auto"),
                              cand.get("num_fewshot"), None, 1234, False)
        config.validate()
        from harness.models import resolve_model

        resolve_model(config.model, config.adapter, online=online, trust_remote_code=config.trust_remote_code)
        configs.append(config)
    run_ids = set()
    for i, config in enumerate(configs, start=1):
        console.rule(f"[{i}/{len(configs)}] {config.model}")
        run_ids.add(execute(config, console).run_id)
    from harness.cli.results import show_ranking

    show_ranking(db, hardware if hardware != "unspecified" else None, as_json, console, only_runs=run_ids,
                 tasks=configs[0].tasks)
