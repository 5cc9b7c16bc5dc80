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
DecodeOpt = Annotated[str, typer.Option("--decode", help="Greedy generation: auto (CUDA graphs on a GPU), graph, "
                                        "compiled (torch.compile, then graphs: for long runs), or generate "
                                        "(transformers' generate)")]
NumGpusOpt = Annotated[int, typer.Option("--num-gpus", help="Data parallel: one model copy per GPU, the items split "
                                         "over them (runs `accelerate launch --num_processes N -m harness run ...`)")]
ParallelizeOpt = Annotated[bool, typer.Option("--parallelize", help="Model parallel: split one model over all "
                                              "visible GPUs (device_map=auto), for models one GPU cannot hold")]
BackendOpt = Annotated[str, typer.Option("--backend", help="hf (transformers) or vllm")]
TensorParallelOpt = Annotated[int, typer.Option("--tensor-parallel", help="vLLM tensor-parallel size (GPUs)")]


def build_config(model: str, adapter: str | None, tasks: str | None, suite: str | None, limit: int | None,
                 hardware: str, db: str | None, data: list[str] | None, device: str, batch_size: str, force: bool,
                 online: bool, trust_remote_code: bool, chat_template: str, num_fewshot: int | None,
                 categories: str | None, seed: int, refined: bool, quantize: str = "none",
                 profiles: list[str] | None = None, decode: str = "auto") -> RunConfig:
    return RunConfig(model=model, adapter=adapter, tasks=split_csv(tasks), suite=suite, limit=limit,
                     hardware=hardware, db=db, data=parse_data_overrides(data or []), device=device,
                     batch_size=batch_size, force=force, online=online, trust_remote_code=trust_remote_code,
                     chat_template=chat_template, num_fewshot=num_fewshot, categories=split_csv(categories),
                     seed=seed, refined=refined, quantize=quantize, profiles=list(profiles or []), decode=decode)


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


def execute(config: RunConfig, console: Console, parallel: Any = None) -> Any:
    from harness.runner import run as run_suite

    with RichProgress(console) as progress:
        return run_suite(config, progress=progress, parallel=parallel)


@app.command()
def run(model: ModelOpt, adapter: AdapterOpt = None, tasks: TasksOpt = None, suite: SuiteOpt = None,
        limit: LimitOpt = None, hardware: HardwareOpt = "unspecified", db: DbOption = None, data: DataOpt = None,
        device: DeviceOpt = "auto", batch_size: BatchOpt = "auto", decode: DecodeOpt = "auto",
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
        num_gpus: NumGpusOpt = 1, parallelize: ParallelizeOpt = False, backend: BackendOpt = "hf",
        tensor_parallel: TensorParallelOpt = 1,
        as_json: JsonOption = False) -> None:
    """Evaluate one model (or model + adapter) on tasks and store every result.

    Exit code 3 when the model does not fit --hardware (the run is stored with status budget_exceeded)."""
    from harness import multigpu
    from harness.hardware import BUDGET_EXCEEDED_EXIT_CODE

    config = build_config(model, adapter, tasks, suite, limit, hardware, db, data, device, batch_size, force, online,
                          trust_remote_code, chat_template, num_fewshot, categories, seed, refined, quantize, profiles,
                          decode)
    parallel = multigpu.ParallelConfig(num_gpus=num_gpus, parallelize=parallelize, backend=backend,
                                       tensor_parallel=tensor_parallel)
    if multigpu.needs_launch(parallel):  # rank 0 of the launched group prints the progress and the result
        result = multigpu.launch_data_parallel(config, parallel, as_json)
        if result.status == "budget_exceeded":
            raise SystemExit(BUDGET_EXCEEDED_EXIT_CODE)
        return
    console = Console(stderr=as_json, quiet=not multigpu.is_main_process())
    result = execute(config, console, parallel)
    if result.status == "follower":  # a non-zero data-parallel rank: rank 0 reports for the group
        return
    multigpu.report_to_launcher(result)
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        from harness.cli.results import print_scores

        print_scores(console, result)
    if result.status == "budget_exceeded" and not multigpu.launched_by_kobench():  # the launcher exits with it
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
    allowed = {"model", "adapter", "batch_size", "decode", "device", "chat_template", "num_fewshot",
               "trust_remote_code", "gpus", "parallelize"}
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
           device: DeviceOpt = "auto", batch_size: BatchOpt = "auto", decode: DecodeOpt = "auto",
           force: Annotated[bool, typer.Option("--force")] = False,
           online: Annotated[bool, typer.Option("--online")] = False,
           gpus: Annotated[str | None, typer.Option("--gpus", help="GPUs to spread the candidates over, e.g. 0,1,2,3 "
                                                    "or all: one process per GPU, all writing to one store")] = None,
           as_json: JsonOption = False) -> None:
    """Zero-shot screening: run every candidate on the same suite, then print their ranking.

    A candidate may take several GPUs (`gpus: 2` in the candidates file: data parallel, or model parallel with
    `parallelize: true`)."""
    from harness import multigpu

    if bool(models) == bool(candidates):
        raise KobenchError("pass either --models M1,M2 or --candidates FILE.yaml")
    cands = [{"model": m} for m in split_csv(models)] if models else load_candidates(candidates)
    gpu_list = multigpu.parse_gpus(gpus) if gpus else None
    console = Console(stderr=as_json)
    configs, parallels, needs = [], [], []
    for cand in cands:  # validate every candidate before running any
        config = build_config(cand["model"], cand.get("adapter"), tasks, suite, limit, hardware, db, data,
                              cand.get("device", device), str(cand.get("batch_size", batch_size)), force, online,
                              bool(cand.get("trust_remote_code", False)), cand.get("chat_template", "auto"),
                              cand.get("num_fewshot"), None, 1234, False, decode=cand.get("decode", decode))
        config.validate()
        from harness.models import resolve_model

        resolve_model(config.model, config.adapter, online=online, trust_remote_code=config.trust_remote_code)
        parallel, need = candidate_parallel(cand)
        configs.append(config)
        parallels.append(parallel.validate(config))
        needs.append(need)
    failed: list[Any] = []
    if gpu_list:
        jobs = multigpu.screen_on_gpus(configs, parallels, needs, gpu_list, on_event=_job_reporter(console))
        run_ids = {job.result["run_id"] for job in jobs if job.ok}
        failed = [job for job in jobs if not job.ok]
    else:
        run_ids = set()
        for i, (config, parallel) in enumerate(zip(configs, parallels), start=1):
            console.rule(f"[{i}/{len(configs)}] {config.model}")
            if multigpu.needs_launch(parallel):
                run_ids.add(multigpu.launch_data_parallel(config, parallel, as_json=True, echo_stdout=False).run_id)
            else:
                run_ids.add(execute(config, console, parallel).run_id)
    from harness.cli.results import show_ranking

    show_ranking(db, hardware if hardware != "unspecified" else None, as_json, console, only_runs=run_ids,
                 tasks=configs[0].tasks)
    if failed:
        logs = failed[0].log_dir.parent if failed[0].log_dir else "?"
        raise KobenchError(f"{len(failed)} of {len(configs)} candidates failed: "
                           f"{', '.join(job.label for job in failed)} (their output: {logs})")


def candidate_parallel(cand: dict[str, Any]) -> tuple[Any, int]:
    """A candidate's ParallelConfig and how many GPUs it takes: `gpus: K` runs data parallel over K GPUs, or
    model parallel over them with `parallelize: true`."""
    from harness.multigpu import ParallelConfig

    need = cand.get("gpus", 1)
    if not isinstance(need, int) or isinstance(need, bool) or need < 1:
        raise KobenchError(f"candidate {cand['model']}: gpus: {need!r} must be a whole number of GPUs, 1 or more")
    if cand.get("parallelize"):
        return ParallelConfig(parallelize=True), need
    return ParallelConfig(num_gpus=need), need


def _job_reporter(console: Console) -> Any:
    """Screening progress: one line as each candidate starts and ends on its GPU(s)."""
    from harness import multigpu

    def report(event: str, job: multigpu.GpuJob) -> None:
        where = f"[gpu {','.join(job.gpus)}]"
        if event == "started":
            console.log(f"{where} {job.label}: started", highlight=False, markup=False)
        elif job.ok:
            result = job.result or {}
            console.log(f"{where} {job.label}: {result.get('status')}, run {result.get('run_id')} "
                        f"in {job.ended - job.started:.1f}s", highlight=False, markup=False)
        else:
            console.log(f"{where} {job.label}: failed (exit code {job.returncode})\n{multigpu.log_tail(job)}",
                        highlight=False, markup=False)

    return report
