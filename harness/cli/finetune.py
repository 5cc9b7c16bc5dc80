"""`kobench finetune` (LoRA/QLoRA the top-ranked model, then benchmark it next to its base) and `kobench chat`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from harness.cli import app
from harness.cli.common import DbOption, JsonOption, split_csv


class TrainingDisplay:
    """Recipe and runner events as a progress bar over training steps plus one log line per loss and task."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total} steps"), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=console)
        self.bar: Any = None

    def __enter__(self) -> TrainingDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: str, **info: Any) -> None:
        if event == "train_start":
            self.bar = self.progress.add_task("training", total=info["total"])
        elif event == "train_step" and self.bar is not None:
            self.progress.update(self.bar, completed=info["step"], total=info["total"])
        elif event == "train_log":
            losses = [f"{name} loss {info[key]:.4f}" for name, key in (("train", "train_loss"), ("eval", "eval_loss"))
                      if info.get(key) is not None]
            self.console.log(f"step {info['step']} (epoch {info['epoch'] or 0:.2f}): {', '.join(losses)}")
        elif event == "status":
            self.console.log(info["text"])
        elif event == "task_done":
            main = info.get("main")
            self.console.log(f"{info['task']}: main metric {main:.4f}" if isinstance(main, float)
                             else f"{info['task']}: done")
        elif event == "task_reused":
            self.console.log(f"{info['task']}: reused from run {info['source_run']}")


def comparison_table(result: Any) -> Table:
    """Per task and metric: the base, the adapter and the difference, on the same items."""
    table = Table(title=f"{result.base} vs {result.base} + {Path(result.output).name}")
    for column in ("task", "metric", "n", "base", "adapter", "Δ"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    base_scores, adapter_scores = result.base_run.scores, result.adapter_run.scores
    for task, metrics in adapter_scores.items():
        for metric, value in metrics.items():
            before = base_scores.get(task, {}).get(metric)
            delta = f"{value - before:+.4f}" if value is not None and before is not None else "n/a"
            table.add_row(task, metric, str(result.adapter_run.n.get(task) or ""),
                          "n/a" if before is None else f"{before:.4f}", "n/a" if value is None else f"{value:.4f}",
                          delta)
    return table


@app.command("finetune")
def finetune_command(
        model: Annotated[str | None, typer.Option("--model", "-m", help="Model to fine-tune: alias, HF id or path")] = None,
        top: Annotated[int | None, typer.Option("--top", help="Fine-tune the K-th base model of the store's ranking "
                                                "(1 = best; adapters and ensembles are skipped)")] = None,
        task: Annotated[str | None, typer.Option("--task", "--tasks", "-t", help="Train on these tasks' train "
                                                 "splits, with their own prompts (comma-separated)")] = None,
        data: Annotated[str | None, typer.Option("--data", help="Train on a chat-messages JSONL or a question,answer "
                                                 "CSV instead")] = None,
        preset: Annotated[str | None, typer.Option("--preset", help="fast, balanced (default), quality or "
                                                   "memory_efficient (finetune/presets.yaml)")] = None,
        method: Annotated[str, typer.Option("--method", help="lora, or qlora (4-bit NF4 base; CUDA only)")] = "lora",
        hardware: Annotated[str, typer.Option("--hardware", help="Rank within this hardware profile for --top, and "
                                              "benchmark the adapter under it")] = "unspecified",
        epochs: Annotated[float | None, typer.Option("--epochs", help="Overrides the preset")] = None,
        lr: Annotated[float | None, typer.Option("--lr", help="Learning rate; overrides the preset")] = None,
        batch_size: Annotated[int | None, typer.Option("--batch-size", help="Overrides the preset")] = None,
        grad_accum: Annotated[int | None, typer.Option("--grad-accum", help="Gradient accumulation steps")] = None,
        batch_tokens: Annotated[int | None, typer.Option("--batch-tokens", help="Pack each step's batch-size x "
                                                         "grad-accum examples without padding into forward passes "
                                                         "of at most N tokens (default: min(batch size x max "
                                                         "length, max(4096, max length))); 0: trl's padded "
                                                         "micro-batches")] = None,
        lora_r: Annotated[int | None, typer.Option("--lora-r", help="LoRA rank; overrides the preset")] = None,
        lora_alpha: Annotated[int | None, typer.Option("--lora-alpha")] = None,
        lora_dropout: Annotated[float | None, typer.Option("--lora-dropout")] = None,
        max_length: Annotated[int | None, typer.Option("--max-length", help="Tokens per example (default 1024)")] = None,
        max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps")] = None,
        max_examples: Annotated[int | None, typer.Option("--max-examples", help="Train on N examples only")] = None,
        eval_steps: Annotated[int | None, typer.Option("--eval-steps", help="Validate + checkpoint every N steps "
                                                       "(default: every epoch)")] = None,
        neftune_alpha: Annotated[float | None, typer.Option("--neftune-alpha", help="NEFTune embedding noise")] = None,
        liger: Annotated[bool, typer.Option("--liger", help="Liger Triton kernels (GPU, liger-kernel)")] = False,
        gradient_checkpointing: Annotated[bool, typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Recompute activations in the backward pass (less memory, ~25% more compute)")] = True,
        output: Annotated[str | None, typer.Option("--output", "-o", help="Adapter directory (default: "
                                                   "adapters/MODEL-TASKS-METHOD-TIME)")] = None,
        merge: Annotated[bool, typer.Option("--merge", help="Also write merged full weights to OUTPUT/merged")] = False,
        no_eval: Annotated[bool, typer.Option("--no-eval", help="Train and save only")] = False,
        eval_tasks: Annotated[str | None, typer.Option("--eval-tasks", help="Benchmark on these tasks (default: the "
                                                       "trained ones; the quick suite after --data)")] = None,
        eval_limit: Annotated[int | None, typer.Option("--limit", "--eval-limit", help="At most N test items per "
                                                       "task in the benchmark")] = None,
        device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto")] = "auto",
        seed: Annotated[int, typer.Option("--seed")] = 1234,
        db: DbOption = None,
        online: Annotated[bool, typer.Option("--online", help="Allow Hugging Face hub downloads")] = False,
        trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
        as_json: JsonOption = False) -> None:
    """Fine-tune a model with LoRA/QLoRA on task train splits (or your data), then benchmark it next to its base."""
    from finetune.config import FinetuneConfig

    config = FinetuneConfig.from_preset(
        preset, model=model, top=top, tasks=split_csv(task), data=data, method=method, hardware=hardware,
        epochs=epochs, learning_rate=lr, batch_size=batch_size, grad_accum=grad_accum, batch_tokens=batch_tokens,
        lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, max_length=max_length, max_steps=max_steps,
        max_examples=max_examples, eval_steps=eval_steps, neftune_alpha=neftune_alpha, liger=liger,
        gradient_checkpointing=gradient_checkpointing, output=output,
        merge=merge, evaluate=not no_eval, eval_tasks=split_csv(eval_tasks), eval_limit=eval_limit, device=device,
        seed=seed, db=db, online=online, trust_remote_code=trust_remote_code)
    config.validate()  # a user mistake ends here, before the training libraries and the model load
    from finetune.recipe import finetune

    from harness.multigpu import is_main_process

    if not is_main_process():  # one of an `accelerate launch` group: rank 0 draws and prints for the group
        finetune(config)
        return
    console = Console(stderr=as_json)
    with TrainingDisplay(console) as display:
        result = finetune(config, progress=display)
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False, default=str))
        return
    training = result.meta["training"]
    console.print(f"adapter: {result.output}")
    console.print(f"trained {training['steps']} steps in {training['wall_s']}s; eval loss "
                  f"{_num(training['eval_loss_before'])} -> {_num(training['eval_loss'])}; loss log: "
                  f"{Path(result.output) / 'loss_log.csv'}")
    if result.adapter_run is not None:
        console.print(comparison_table(result))


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@app.command("chat")
def chat_command(
        model: Annotated[str, typer.Option("--model", "-m", help="Alias, HF id or local path")],
        adapter: Annotated[str | None, typer.Option("--adapter", help="Adapter directory (its chat template is "
                                                    "used)")] = None,
        prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Answer this one message and exit")] = None,
        system: Annotated[str | None, typer.Option("--system", help="A system message first")] = None,
        temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy")] = 0.0,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 256,
        device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto")] = "auto",
        online: Annotated[bool, typer.Option("--online")] = False,
        trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False) -> None:
    """Chat with a model (+ adapter) in the console; /reset starts over, /exit quits."""
    import warnings

    from rich.prompt import Prompt
    from transformers.utils import logging as transformers_logging

    from finetune.chat import ChatSession

    transformers_logging.disable_progress_bar()  # the console belongs to the conversation
    warnings.filterwarnings("ignore", category=FutureWarning)
    console = Console()
    with console.status(f"loading {model}" + (f" + {adapter}" if adapter else "")):
        session = ChatSession(model, adapter, device=device, temperature=temperature, max_new_tokens=max_new_tokens,
                              system=system, online=online, trust_remote_code=trust_remote_code)
    if prompt is not None:
        print(session.reply(prompt))
        return
    console.print(f"[dim]{session.spec.display_name} on {session.device}, chat template: "
                  f"{session.template_source}. /reset starts over, /exit quits.[/]")
    while True:
        try:
            text = Prompt.ask("[bold cyan]you[/]", console=console)
        except EOFError:
            break
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            session.reset()
            console.print("[dim]history cleared[/]")
            continue
        if not text.strip():
            continue
        console.print(f"[bold green]model[/] {session.reply(text)}", highlight=False)
