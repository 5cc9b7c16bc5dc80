"""One typed config per fine-tuning run: a preset from presets.yaml, overridden by flags, validated once.

The resolved config (every field, the preset's values filled in) is what kobench_adapter.json records, so an adapter
says exactly how it was trained.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import KobenchError

PRESETS_FILE = Path(__file__).resolve().parent / "presets.yaml"
DEFAULT_PRESET = "balanced"
METHODS = ("lora", "qlora")
# the fields a preset may set; everything else is a flag or a default
PRESET_FIELDS = ("epochs", "learning_rate", "batch_size", "grad_accum", "lora_r", "lora_alpha", "lora_dropout")


def load_presets(path: Path = PRESETS_FILE) -> dict[str, dict[str, Any]]:
    """The presets by name, each checked to set only preset fields."""
    with open(path, encoding="utf-8") as handle:
        presets = yaml.safe_load(handle) or {}
    for name, values in presets.items():
        unknown = set(values or {}) - set(PRESET_FIELDS)
        if unknown:
            raise KobenchError(f"{path}: preset {name} sets unknown key(s) {', '.join(sorted(unknown))}; "
                               f"a preset sets only {', '.join(PRESET_FIELDS)}")
    return presets


@dataclass
class FinetuneConfig:
    """Everything that decides what `kobench finetune` trains, on what, and how it is evaluated afterwards."""

    # which base model: --model, or the --top K-th of the store's ranking
    model: str | None = None
    top: int | None = None
    # training data: the tasks' train splits (their own prompts), or a user file
    tasks: list[str] = field(default_factory=list)
    data: str | None = None
    max_examples: int | None = None  # use only the first N training examples (quick CPU runs)
    method: str = "lora"
    preset: str = DEFAULT_PRESET
    # from the preset unless given
    epochs: float = 4
    learning_rate: float = 1e-4
    batch_size: int = 2
    grad_accum: int = 1
    # the most tokens in one forward pass: each step's batch_size x grad_accum examples are packed padding-free into
    # passes of at most this many tokens (None: finetune.packing.default_batch_tokens; 0: trl's padded micro-batches)
    batch_tokens: int | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # training loop
    max_length: int = 1024  # tokens per example (prompt + answer); longer examples keep their start
    max_steps: int | None = None  # stop after N optimizer steps (overrides epochs)
    eval_steps: int | None = None  # evaluate + checkpoint every N steps (default: every epoch, or max_steps/4)
    logging_steps: int | None = None  # default: about 20 log lines per run
    early_stopping_patience: int = 2  # evaluations without a lower eval loss before stopping
    warmup_ratio: float = 0.03
    gradient_checkpointing: bool = True
    neftune_alpha: float | None = None
    liger: bool = False
    seed: int = 1234
    device: str = "auto"
    random_init: bool = False  # benchmarks only: random weights from the model's config.json, no checkpoint needed
    # output
    output: str | None = None
    merge: bool = False
    # evaluation afterwards
    evaluate: bool = True
    eval_tasks: list[str] = field(default_factory=list)  # default: the trained tasks
    eval_limit: int | None = None
    hardware: str = "unspecified"
    db: str | None = None
    online: bool = False
    trust_remote_code: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_preset(cls, preset: str | None = None, **flags: Any) -> FinetuneConfig:
        """The preset's values, then every flag that was given (None = not given) on top."""
        name = preset or DEFAULT_PRESET
        presets = load_presets()
        if name not in presets:
            raise KobenchError(f"--preset {name}: unknown preset. Known presets: {', '.join(presets)} "
                               f"(defined in {PRESETS_FILE.relative_to(PRESETS_FILE.parent.parent)})")
        values = dict(presets[name] or {})
        values.update({key: value for key, value in flags.items() if value is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f"unknown FinetuneConfig field(s): {', '.join(sorted(unknown))}")
        config = cls(preset=name, **values)
        # YAML reads 2e-4 as a string; presets write 2.0e-4, but a hand-edited file should not break training
        config.learning_rate = float(config.learning_rate)
        config.epochs = float(config.epochs)
        return config

    def validate(self) -> FinetuneConfig:
        """Check every flag that can be checked before loading anything; raise KobenchError on the first problem."""
        if (self.model is None) == (self.top is None):
            raise KobenchError("pass either --model M (a model to fine-tune) or --top K (the K-th model of the "
                               "store's ranking), not both and not neither")
        if self.top is not None and self.top < 1:
            raise KobenchError(f"--top {self.top}: must be 1 or more (1 = the best-ranked model)")
        if self.tasks and self.data:
            raise KobenchError("--task and --data both given: train on the tasks' train splits or on your file, "
                               "not both")
        if not self.tasks and not self.data:
            raise KobenchError("no training data: pass --task T[,T2] (their train splits) or --data FILE "
                               "(chat-messages JSONL or a question,answer CSV)")
        if self.method not in METHODS:
            raise KobenchError(f"--method {self.method}: unknown; use {' or '.join(METHODS)}")
        positive = {"--epochs": self.epochs, "--lr": self.learning_rate, "--batch-size": self.batch_size,
                    "--grad-accum": self.grad_accum, "--lora-r": self.lora_r, "--max-length": self.max_length}
        for flag, value in positive.items():
            if value is None or value <= 0:
                raise KobenchError(f"{flag} {value}: must be a positive number")
        for flag, value in {"--max-steps": self.max_steps, "--eval-steps": self.eval_steps,
                            "--max-examples": self.max_examples, "--eval-limit": self.eval_limit}.items():
            if value is not None and value < 1:
                raise KobenchError(f"{flag} {value}: must be 1 or more (or leave it out)")
        if self.batch_tokens is not None and self.batch_tokens < 0:
            raise KobenchError(f"--batch-tokens {self.batch_tokens}: must be a number of tokens per forward pass, or 0 "
                               "for trl's padded micro-batches")
        if not 0 <= self.lora_dropout < 1:
            raise KobenchError(f"--lora-dropout {self.lora_dropout}: must be in [0, 1)")
        if self.neftune_alpha is not None and self.neftune_alpha <= 0:
            raise KobenchError(f"--neftune-alpha {self.neftune_alpha}: must be positive (5 is the paper's usual "
                               "value), or leave it out")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise KobenchError(f"--device {self.device}: use cpu, cuda, cuda:N or auto")
        on_gpu = self.device != "cpu" and _cuda_available()
        if self.method == "qlora" and not on_gpu:
            raise KobenchError("--method qlora: QLoRA trains on a 4-bit (bitsandbytes NF4) base, which needs a CUDA "
                               "GPU, and none is visible to torch. Use --method lora on this machine")
        if self.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
            raise KobenchError("--method qlora: needs the bitsandbytes package. Run `pip install bitsandbytes`")
        if self.liger and not on_gpu:
            raise KobenchError("--liger: Liger kernels are Triton GPU kernels and no CUDA GPU is visible to torch. "
                               "Leave out --liger on this machine")
        if self.liger and importlib.util.find_spec("liger_kernel") is None:
            raise KobenchError("--liger: needs the liger-kernel package. Run `pip install liger-kernel`, or leave "
                               "out --liger")
        if self.hardware != "unspecified":
            from harness.hardware import get_profile

            get_profile(self.hardware)
        from harness.tasks import get_task

        for name in self.tasks + self.eval_tasks:
            get_task(name)
        if self.data and not Path(self.data).expanduser().exists():
            raise KobenchError(f"--data {self.data}: no such file. Pass a chat-messages JSONL or a "
                               "question,answer CSV")
        return self

    @property
    def training_device(self) -> str:
        from harness.models import select_device

        return select_device(self.device)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
