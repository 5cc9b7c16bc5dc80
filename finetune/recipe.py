"""The fine-tuning recipe, top to bottom: base model -> data -> model -> trainer -> train -> save -> evaluate.

`finetune(FinetuneConfig)` is what `kobench finetune` runs. The adapter directory it writes holds the PEFT adapter,
the tokenizer (with the chat template used and any pad token added) and kobench_adapter.json: the base model's
identity (checked again by harness.models.resolve_model whenever the adapter is loaded), the data hashes, the
resolved config and the losses. Evaluation goes through harness.runner like any other run, so the adapter lands in
the results store as a model row of kind "adapter" pointing at its base (base_model_id); its `details.training`
holds the training record (copied from kobench_adapter.json when the adapter is resolved).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from finetune.config import FinetuneConfig
from finetune.data import SFTData, build_sft_data, fit_to_template
from finetune.distributed import Group
from finetune.template import ensure_chat_template
from harness.errors import KobenchError
from harness.models import ADAPTER_META_FILE, ModelSpec, resolve_model
from harness.redact import redact_value

if TYPE_CHECKING:
    from finetune.packing import BatchingPlan

Progress = Callable[..., None]
PAD_TOKEN = "<|kobench_pad|>"
LOSS_LOG = "loss_log.csv"
LOSS_LOG_COLUMNS = ("step", "epoch", "elapsed_s", "num_tokens", "train_loss", "eval_loss", "learning_rate")
META_VERSION = 1


@dataclass
class BaseModel:
    """The model being fine-tuned: how to name it to the runner, its resolved identity, why it was picked."""

    argument: str  # what --model gets (alias, Hugging Face id or local path)
    spec: ModelSpec
    picked_by: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneResult:
    output: str
    base: str
    meta: dict[str, Any]
    base_run: Any = None  # harness.runner.RunResult of the base model on the evaluation tasks
    adapter_run: Any = None  # ... and of base + adapter, on the same items

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "base": self.base, "training": self.meta["training"],
                "base_run": self.base_run.to_json() if self.base_run else None,
                "adapter_run": self.adapter_run.to_json() if self.adapter_run else None}


def finetune(config: FinetuneConfig, progress: Progress | None = None) -> FinetuneResult:
    """Train a LoRA/QLoRA adapter as configured, save it, then benchmark it next to its base."""
    progress = progress or (lambda *args, **info: None)
    config.validate()
    group = Group()  # a group of one, unless started by `accelerate launch`
    if not group.is_main:
        progress = lambda *args, **info: None  # noqa: E731 - rank 0 reports for the group
    device = group.device(config.training_device)

    base = choose_base_model(config)
    data = build_sft_data(config.tasks, config.data, config.seed, config.max_examples)
    output = group.share(prepare_output_dir(config, base) if group.is_main else None)
    progress("status", text=f"fine-tuning {base.argument} ({config.method}, preset {config.preset}) into {output}")
    if (checkpoint := resumable_checkpoint(output)) is not None:
        progress("status", text=f"resuming the interrupted fine-tune from {checkpoint.name}")

    with group.main_first():  # rank 0 converts an embedded model into the cache once
        tokenizer = load_tokenizer(base.spec, config, progress)
    template_source = ensure_chat_template(tokenizer)
    system_dropped = fit_to_template(data, tokenizer)
    progress("status", text=f"data: {len(data.train)} training / {len(data.eval)} validation examples; "
                            f"chat template: {template_source}")

    if config.random_init and config.method == "qlora":
        with group.main_first():  # ... and writes a random-weights checkpoint (benchmarks) once
            random_checkpoint(base.spec.load_path, device, progress)
    model = load_training_model(base.spec, config, device, progress, place=not group.fsdp)
    pad = ensure_pad_token(tokenizer, model)
    trainer = build_trainer(model, tokenizer, data, config, output, device, progress, log=group.is_main)

    training = {**train(trainer, device), "processes": group.world_size, "parallel": group.kind}
    meta = save_adapter(trainer, tokenizer, base, data, config, output, training,
                        {"source": template_source, "template": tokenizer.chat_template,
                         "system_turns_dropped": system_dropped}, pad, write=group.is_main, fsdp=group.fsdp)
    del trainer, model
    if config.merge and group.is_main:
        merge_adapter(base.spec, output, config, device, progress)
    group.wait()  # the adapter is on disk before any rank loads it to evaluate
    result = FinetuneResult(output=str(output), base=base.argument, meta=meta)
    if config.evaluate:
        result.base_run, result.adapter_run = evaluate_adapter(base, output, config, progress)
    return result


# ---------------------------------------------------------------------------------------------------------------
# 1. The base model: --model, or the K-th base model of the store's ranking
# ---------------------------------------------------------------------------------------------------------------

def choose_base_model(config: FinetuneConfig) -> BaseModel:
    if config.model is not None:
        spec = resolve_model(config.model, online=config.online, trust_remote_code=config.trust_remote_code)
        return BaseModel(argument=config.model, spec=spec, picked_by={"model": config.model})
    argument, row, stored_hash = ranked_model(config.db, config.top, config.hardware)
    spec = resolve_model(argument, online=config.online, trust_remote_code=config.trust_remote_code)
    if stored_hash and spec.weights_hash and stored_hash != spec.weights_hash:
        raise KobenchError(f"--top {config.top}: the store ranked {row.model} with weights {stored_hash[:12]}, but "
                           f"{argument} now holds weights {spec.weights_hash[:12]}. Re-run `kobench run` on it, or "
                           "pass --model")
    return BaseModel(argument=argument, spec=spec, picked_by={
        "top": config.top, "hardware": row.hardware, "rank": row.rank, "model_id": row.model_id,
        "average": row.average, "scores": row.scores})


def ranked_model(db: str | None, top: int, hardware: str = "unspecified") -> tuple[str, Any, str | None]:
    """(the --model argument, its ranking row, its stored weights hash) of the top-th base model of the ranking.

    Adapters and ensembles are skipped (a fine-tune starts from base weights); a model ranked under several
    hardware profiles counts once, at its best place."""
    from harness.ranking import ranking
    from harness.store import open_store
    from harness.store.schema import Model

    store = open_store(db)
    try:
        within = hardware if hardware != "unspecified" else None
        rows, seen = [], set()
        for row in ranking(store, within):
            if row.kind in ("adapter", "ensemble") or row.model_id in seen:
                continue
            seen.add(row.model_id)
            rows.append(row)
        where = f" on hardware {hardware}" if within else ""
        if not rows:
            raise KobenchError(f"--top {top}: the store {store.display_url} has no finished base-model runs{where}. "
                               "Run `kobench screen` or `kobench run` first, or pass --model")
        if top > len(rows):
            names = ", ".join(f"{i}. {r.model}" for i, r in enumerate(rows, start=1))
            raise KobenchError(f"--top {top}: the ranking{where} has only {len(rows)} base model(s) ({names}). "
                               f"Pass --top 1..{len(rows)} or --model")
        row = rows[top - 1]
        with store.session() as session:
            model = session.get(Model, row.model_id)
            source, stored_hash = model.source, model.weights_hash
    finally:
        store.dispose()
    return model_argument(source, row.model), row, stored_hash


def model_argument(source: str, name: str) -> str:
    """Turn a stored model's source back into what --model takes."""
    kind, _, rest = source.partition(":")
    if kind == "hf":
        return rest
    if kind == "local":
        if not Path(rest).exists():
            raise KobenchError(f"the store's model {name} was loaded from {rest}, which no longer exists. Restore "
                               "it, or pass --model")
        return rest
    return name  # pypi: an embedded alias


def prepare_output_dir(config: FinetuneConfig, base: BaseModel) -> Path:
    if config.output:
        output = Path(config.output).expanduser()
    else:
        what = "-".join(config.tasks) if config.tasks else Path(config.data).stem
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        output = Path("adapters") / _slug(f"{Path(base.argument).name}-{what}-{config.method}-{stamp}")
    if output.exists() and any(output.iterdir()):
        if resumable_checkpoint(output) is not None and not (output / ADAPTER_META_FILE).exists():
            return output.resolve()  # an interrupted fine-tune (no adapter saved yet): train() resumes it
        raise KobenchError(f"--output {output}: exists and is not empty; pass a new directory (an adapter is never "
                           "written over another)")
    output.mkdir(parents=True, exist_ok=True)
    return output.resolve()


def resumable_checkpoint(output: Path) -> Path | None:
    """The newest complete trainer checkpoint under output/checkpoints (the trainer writes trainer_state.json last,
    so a checkpoint cut short by a crash has none)."""
    complete = [p for p in (output / "checkpoints").glob("checkpoint-*")
                if p.name.removeprefix("checkpoint-").isdigit() and (p / "trainer_state.json").exists()]
    return max(complete, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text).strip("-")


# ---------------------------------------------------------------------------------------------------------------
# 2. Tokenizer and model
# ---------------------------------------------------------------------------------------------------------------

def load_tokenizer(spec: ModelSpec, config: FinetuneConfig, progress: Progress) -> Any:
    from transformers import AutoTokenizer

    from harness.models import EMBEDDED_MODELS, convert_embedded

    if spec.details.get("embedded") and not spec.load_path:
        spec.load_path = str(convert_embedded(EMBEDDED_MODELS[spec.name], lambda m: progress("status", text=m)))
    try:
        return AutoTokenizer.from_pretrained(spec.load_path, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise KobenchError(f"--model {spec.name}: cannot load its tokenizer from {spec.load_path} "
                           f"({str(exc).splitlines()[0][:200]})") from None


def training_dtype(device: str) -> Any:
    """fp32 on CPU; bf16 on a GPU that has it, else fp16 (mixed precision is set on the trainer to match)."""
    import torch

    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_training_model(spec: ModelSpec, config: FinetuneConfig, device: str, progress: Progress,
                        place: bool = True) -> Any:
    """The base model in its training precision; for QLoRA, 4-bit NF4 weights with double quantization and bf16
    compute, prepared for k-bit training (norms in fp32). With place=False (LoRA under FSDP) the model stays on the
    CPU: the Trainer shards it and moves each rank's shard to its GPU."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = training_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": config.trust_remote_code}
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": torch.device(device).index or 0}
    progress("status", text=f"loading {spec.name} for {config.method} training on {device} "
                            f"({'nf4' if config.method == 'qlora' else str(dtype).replace('torch.', '')})")
    if config.random_init and config.method == "lora":
        from transformers import AutoConfig

        with torch.device(device if place else "cpu"):
            model = AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(spec.load_path, trust_remote_code=config.trust_remote_code),
                dtype=dtype, trust_remote_code=config.trust_remote_code)
    else:
        # QLoRA quantizes while loading a checkpoint, so random weights are first written to one
        path = random_checkpoint(spec.load_path, device, progress) if config.random_init else spec.load_path
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        # the trainer turns gradient checkpointing on itself (SFTConfig.gradient_checkpointing)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    elif place:
        model.to(device)
    model.config.use_cache = False  # no KV cache while training (it conflicts with gradient checkpointing)
    return model


def random_checkpoint(config_dir: str, device: str, progress: Progress) -> str:
    """A checkpoint of random weights with the shape of `config_dir`'s config.json (benchmarks of large shapes),
    cached by the config's content."""
    import hashlib
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.paths import cache_dir

    config_text = (Path(config_dir) / "config.json").read_bytes()
    target = cache_dir() / "random-init" / hashlib.sha256(config_text).hexdigest()[:16]
    if (target / "model.safetensors.index.json").exists() or (target / "model.safetensors").exists():
        return str(target)
    progress("status", text=f"writing a random-weights checkpoint to {target} (one time)")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir), dtype=torch.bfloat16)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return str(target)


def ensure_pad_token(tokenizer: Any, model: Any) -> dict[str, Any]:
    """A pad token distinct from EOS, so EOS stays a real token the model learns to emit (and padding never
    looks like an end of answer). Adds one when the tokenizer has none or pads with EOS, and grows the embeddings
    when the new id does not fit them; harness.models grows them the same way when loading the adapter."""
    info: dict[str, Any] = {"pad_token": tokenizer.pad_token, "added": False}
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        info = {"pad_token": PAD_TOKEN, "added": True, "replaced": info["pad_token"]}
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer))
        info["embedding_rows"] = [rows, len(tokenizer)]
    info["pad_token_id"] = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return info


# ---------------------------------------------------------------------------------------------------------------
# 3. The trainer: TRL SFT on prompt-completion examples, LoRA on every linear layer
# ---------------------------------------------------------------------------------------------------------------

def lora_config(config: FinetuneConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")


def sft_config(config: FinetuneConfig, output: Path, device: str, n_train: int,
               batching: BatchingPlan | None = None) -> Any:
    """trl's arguments for the run; `batching` (finetune.packing.BatchingPlan) sets the per-device batch and the
    accumulation (packed: the whole step in one batch, which the trainer splits into passes itself)."""
    import torch
    from trl import SFTConfig

    steps_per_epoch = max(1, math.ceil(n_train / (config.batch_size * config.grad_accum)))
    total_steps = config.max_steps or math.ceil(steps_per_epoch * config.epochs)
    # evaluate (and checkpoint: best-model tracking needs both on the same schedule) every epoch, or every
    # eval_steps; a --max-steps run evaluates four times
    eval_steps = config.eval_steps or (max(1, config.max_steps // 4) if config.max_steps else None)
    schedule = {"eval_strategy": "steps", "save_strategy": "steps", "eval_steps": eval_steps,
                "save_steps": eval_steps} if eval_steps else {"eval_strategy": "epoch", "save_strategy": "epoch"}
    on_gpu = device.startswith("cuda")
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns)
    checkpointing = ("activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__
                     else "gradient_checkpointing")
    args = SFTConfig(
        output_dir=str(output / "checkpoints"), seed=config.seed, data_seed=config.seed,
        num_train_epochs=config.epochs, max_steps=config.max_steps or -1,
        per_device_train_batch_size=batching.batch_size if batching else config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=batching.grad_accum if batching else config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=config.warmup_ratio,
        # the data: conversational prompt-completion, loss on the completion (answer + end of turn) only
        max_length=config.max_length, completion_only_loss=True, packing=False,
        **{checkpointing: config.gradient_checkpointing},
        neftune_noise_alpha=config.neftune_alpha, use_liger_kernel=config.liger,
        **schedule, save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="eval_loss",
        greater_is_better=False, eval_on_start=True,
        logging_steps=config.logging_steps or max(1, total_steps // 20), logging_first_step=True,
        bf16=bf16, fp16=on_gpu and not bf16, use_cpu=not on_gpu,
        # under DDP: every LoRA matrix gets a gradient each step, and the search for unused ones breaks with
        # gradient checkpointing (a parameter marked ready twice)
        ddp_find_unused_parameters=False,
        report_to="none", disable_tqdm=True, dataloader_pin_memory=on_gpu)
    if on_gpu and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        # one process with several GPUs visible: the Trainer would wrap the model in nn.DataParallel, which TRL
        # refuses; kobench trains on the one GPU it placed the model on (several GPUs: `accelerate launch`, DDP)
        _ = args.device  # sets the Trainer's own GPU count first
        args._n_gpu = 1
    return args


def build_trainer(model: Any, tokenizer: Any, data: SFTData, config: FinetuneConfig, output: Path, device: str,
                  progress: Progress, log: bool = True) -> Any:
    """The SFT trainer; `log` (rank 0 of a launched group, or a plain process) writes the loss log."""
    import datasets
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback

    from finetune.packing import KobenchSFTTrainer, plan_batching

    datasets.disable_progress_bars()  # TRL's tokenizing passes take no time worth a bar each

    batching = plan_batching(model, config)
    progress("status", text=batching.describe())
    args = sft_config(config, output, device, len(data.train), batching)
    callbacks = [LossLog(output / LOSS_LOG)] if log else []
    callbacks += [TrainingProgress(progress),
                  EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)]
    trainer = KobenchSFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=lora_config(config),
                                train_dataset=Dataset.from_list([e.to_record() for e in data.train]),
                                eval_dataset=Dataset.from_list([e.to_record() for e in data.eval]),
                                callbacks=callbacks, batching=batching)
    trainer.remove_callback(PrinterCallback)  # TrainingProgress reports the losses
    return trainer


class LossLog(TrainerCallback):
    """Every logged train loss and eval loss, one CSV row per log event, as training goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.perf_counter()
        if not path.exists():  # a resumed fine-tune keeps the log written before the interruption
            with open(path, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(LOSS_LOG_COLUMNS)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()
        # resumed at a checkpoint: the steps logged after it run again, so their rows go
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))[1:]
        with open(self.path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(LOSS_LOG_COLUMNS)
            writer.writerows(row for row in rows if row and int(row[0]) <= state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" not in logs and "eval_loss" not in logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
               "elapsed_s": round(time.perf_counter() - self.started, 3), "num_tokens": logs.get("num_tokens"),
               "train_loss": logs.get("loss"), "eval_loss": logs.get("eval_loss"),
               "learning_rate": logs.get("learning_rate")}
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow(["" if row[c] is None else row[c] for c in LOSS_LOG_COLUMNS])


class TrainingProgress(TrainerCallback):
    """Trainer events as kobench progress events (the CLI draws a progress bar from them)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress("train_start", total=state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress("train_step", step=state.global_step, total=state.max_steps)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" in logs or "eval_loss" in logs:
            self.progress("train_log", step=state.global_step, epoch=state.epoch, train_loss=logs.get("loss"),
                          eval_loss=logs.get("eval_loss"))


# ---------------------------------------------------------------------------------------------------------------
# 4. Train
# ---------------------------------------------------------------------------------------------------------------

def train(trainer: Any, device: str) -> dict[str, Any]:
    """Run the trainer; returns the training record's numbers (losses, steps, speed, peak memory)."""
    from harness.runner import MemorySampler

    start = time.perf_counter()
    with MemorySampler(device) as memory:
        checkpoint = resumable_checkpoint(Path(trainer.args.output_dir).parent)
        outcome = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = time.perf_counter() - start
    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    tokens = max((h.get("num_tokens") or 0 for h in history), default=0)
    return {
        "steps": trainer.state.global_step, "max_steps": trainer.state.max_steps,
        "epochs": round(trainer.state.epoch or 0.0, 3),
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "mean_train_loss": outcome.training_loss,
        "eval_loss_before": eval_losses[0] if eval_losses else None,
        "eval_loss": trainer.state.best_metric,  # the best checkpoint's, which is the one saved
        "best_checkpoint_step": _step_of(trainer.state.best_model_checkpoint),
        "train_tokens": int(tokens) or None, "tokens_per_s": round(tokens / wall, 1) if tokens and wall else None,
        "wall_s": round(wall, 1), "peak_mem_mb": round(memory.peak_mb, 1) if memory.peak_mb else None,
        "device": device, "batching": trainer.batching_record(),
    }


def _step_of(checkpoint: str | None) -> int | None:
    match = re.search(r"checkpoint-(\d+)$", checkpoint or "")
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------------------------------
# 5. Save: adapter + tokenizer + kobench_adapter.json
# ---------------------------------------------------------------------------------------------------------------

def save_adapter(trainer: Any, tokenizer: Any, base: BaseModel, data: SFTData, config: FinetuneConfig, output: Path,
                 numbers: dict[str, Any], chat_template: dict[str, Any], pad: dict[str, Any],
                 write: bool = True, fsdp: bool = False) -> dict[str, Any]:
    """Write (when `write`: one process of a launched group) the adapter (the best checkpoint's weights), its
    tokenizer and the metadata; returns the metadata. Under FSDP every rank takes part in gathering the sharded
    adapter (the Trainer's save_model), and rank 0 writes it."""
    from harness.runner import environment_versions

    if fsdp:
        trainer.save_model(str(output))
    if write:
        # the embedding matrix travels with the adapter only when a pad token grew it
        if not fsdp:
            trainer.model.save_pretrained(output, save_embedding_layers=bool(pad.get("embedding_rows")))
        tokenizer.save_pretrained(output)
    spec = base.spec
    training = {
        "method": config.method, "preset": config.preset,
        "hyperparameters": {k: getattr(config, k) for k in (
            "epochs", "learning_rate", "batch_size", "grad_accum", "batch_tokens", "lora_r", "lora_alpha",
            "lora_dropout", "max_length", "max_steps", "warmup_ratio", "neftune_alpha", "seed")},
        "data": {"tasks": config.tasks, "file": config.data, "hashes": data.hashes(), "n_train": len(data.train),
                 "n_eval": len(data.eval)},
        "chat_template": chat_template["source"], **numbers,
    }
    meta = {
        "kobench_adapter": META_VERSION,
        "base": {"name": spec.name, "argument": base.argument, "source": spec.source, "revision": spec.revision,
                 "weights_hash": spec.weights_hash},
        "picked_by": base.picked_by,
        "config": redact_value(config.to_dict()),  # a PostgreSQL --db URL may carry a password
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                 "target_modules": "all-linear", "quantized_base": "nf4-double-quant" if config.method == "qlora"
                 else None},
        "data": data.sources,
        "chat_template": chat_template,
        "pad_token": pad,
        "training": training,
        "loss_log": LOSS_LOG,
        "versions": environment_versions(),
        "created_at": datetime.now().isoformat(timespec="seconds"),
    }
    if write:
        (output / ADAPTER_META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False, default=str),
                                                encoding="utf-8")
    return meta


def merge_adapter(spec: ModelSpec, output: Path, config: FinetuneConfig, device: str, progress: Progress) -> Path:
    """Full merged weights in output/merged: the base in 16/32-bit (never 4-bit, even after QLoRA) + the adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress("status", text=f"merging the adapter into {spec.name} -> {output / 'merged'}")
    source = random_checkpoint(spec.load_path, device, progress) if config.random_init else spec.load_path
    model = AutoModelForCausalLM.from_pretrained(source, dtype=training_dtype(device),
                                                 trust_remote_code=config.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(output)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    merged = PeftModel.from_pretrained(model, str(output)).merge_and_unload()
    merged.save_pretrained(output / "merged")
    tokenizer.save_pretrained(output / "merged")
    return output / "merged"


# ---------------------------------------------------------------------------------------------------------------
# 6. Evaluate: the base and base + adapter on the same items, into the results store
# ---------------------------------------------------------------------------------------------------------------

def evaluation_tasks(config: FinetuneConfig) -> list[str]:
    """--eval-tasks, else the trained tasks; after training on a user file, the quick suite."""
    return list(config.eval_tasks or config.tasks)


def evaluate_adapter(base: BaseModel, output: Path, config: FinetuneConfig, progress: Progress) -> tuple[Any, Any]:
    from harness.config import RunConfig
    from harness.runner import run

    tasks = evaluation_tasks(config)
    common = {"tasks": tasks, "suite": None if tasks else "quick", "limit": config.eval_limit,
              "hardware": config.hardware, "db": config.db, "device": config.device, "online": config.online,
              "trust_remote_code": config.trust_remote_code, "seed": config.seed}
    progress("status", text=f"benchmarking the base {base.argument} (reused from the store when it has the run)")
    base_run = run(RunConfig(model=base.argument, **common), progress=progress)
    progress("status", text=f"benchmarking {base.argument} + adapter {output.name}")
    adapter_run = run(RunConfig(model=base.argument, adapter=str(output), **common), progress=progress)
    return base_run, adapter_run
