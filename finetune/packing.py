"""Padding-free token-budget batches: how `kobench finetune` runs the examples of one optimizer step.

`--batch-size B --grad-accum A` means B x A examples per optimizer step, in the sampler's order, as with trl's padded
micro-batches. kobench keeps those examples and that loss, and changes only how they reach the model: the step's
examples are concatenated into one row with no padding (trl's `DataCollatorForLanguageModeling(padding_free=True)`:
position_ids restart at 0 for each example, the first label of each example is ignored), and the row is cut at
example boundaries into as few forward passes of at most `--batch-tokens` tokens as possible, evened out. Each pass's
loss is divided by the completion tokens of the whole step (transformers' `num_items_in_batch`), so the passes'
gradients add up to the gradient of the padded step: the mean over all the step's completion tokens.

Attention never crosses examples: transformers builds a block-diagonal mask from the restarting position_ids (sdpa,
eager, flex) or reads the examples' bounds (flash attention). Running sdpa one example at a time instead (attention
costing the separate examples, not the square of the pass) was measured slower on an H200: 1.07x trl's padded
batches against 2.75x for the one masked sdpa call per layer (docs/performance.md), so the pass keeps that call.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from finetune.config import FinetuneConfig

# attention implementations that take packed rows: transformers turns restarting position_ids into a block-diagonal
# mask for sdpa, eager and flex, and flash attention reads the examples' bounds (cu_seq_lens) itself
PACKABLE_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
# The default pass size. A pass never holds more than one padded micro-batch of the user's could (batch_size x
# max_length), so packing never asks for more memory than --batch-size did; and at most 4,096 tokens (unless one
# example may be longer): long enough for the matrix multiplications to run near full rate. Measured: QLoRA of the
# 7.8B shape with passes of up to 4,096 tokens peaked at 10,945 MiB, under a 12 GiB budget (docs/performance.md).
DEFAULT_BATCH_TOKENS = 4096


@dataclass
class BatchingPlan:
    """How a fine-tune's optimizer steps reach the model: packed padding-free passes, or trl's padded batches."""

    packed: bool
    examples_per_step: int  # per process: batch_size x grad_accum
    batch_size: int  # the trainer's per-device batch: the whole step when packed
    grad_accum: int  # the trainer's accumulation steps: 1 when packed (kobench splits the step itself)
    batch_tokens: int | None  # packed: the most tokens in one forward pass
    attention: str
    reason: str  # why padded (a fallback), or what packing runs on

    def describe(self) -> str:
        if self.packed:
            return (f"batching: each step's {self.examples_per_step} examples packed without padding into forward "
                    f"passes of at most {self.batch_tokens} tokens ({self.reason})")
        return (f"batching: trl's padded micro-batches of {self.batch_size} x {self.grad_accum} accumulation steps, "
                f"not packed: {self.reason}")

    def to_record(self) -> dict[str, Any]:
        return {"kind": "padding-free" if self.packed else "padded", "examples_per_step": self.examples_per_step,
                "batch_tokens": self.batch_tokens, "attention": self.attention, "reason": self.reason}


def default_batch_tokens(batch_size: int, max_length: int) -> int:
    """--batch-tokens when not given (see DEFAULT_BATCH_TOKENS)."""
    return min(batch_size * max_length, max(DEFAULT_BATCH_TOKENS, max_length))


def plan_batching(model: Any, config: FinetuneConfig) -> BatchingPlan:
    """Packed passes when this model keeps packed examples apart and nothing else in the run depends on padding;
    otherwise trl's padded batches, with the reason."""
    examples = config.batch_size * config.grad_accum
    attention = model.config._attn_implementation
    budget = (config.batch_tokens if config.batch_tokens is not None
              else default_batch_tokens(config.batch_size, config.max_length))

    def padded(reason: str) -> BatchingPlan:
        return BatchingPlan(packed=False, examples_per_step=examples, batch_size=config.batch_size,
                            grad_accum=config.grad_accum, batch_tokens=None, attention=attention, reason=reason)

    if budget == 0:
        return padded("--batch-tokens 0")
    if getattr(model.config, "is_encoder_decoder", False):
        return padded("an encoder-decoder model has no single row of tokens to pack")
    if not getattr(model, "_supports_attention_backend", False):
        return padded(f"{type(model).__name__} does not run attention through transformers' attention interface "
                      "(remote or older modeling code), so nothing guarantees its packed examples stay apart")
    if attention not in PACKABLE_ATTENTION:
        return padded(f"attention implementation {attention} is not one that keeps packed examples apart "
                      f"({', '.join(PACKABLE_ATTENTION)})")
    if config.neftune_alpha is not None:
        return padded("NEFTune scales its noise by the padded sequence length, which packing would change")
    forward = inspect.signature(model.forward).parameters.values()
    if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in forward):
        return padded(f"{type(model).__name__}.forward takes no extra keyword arguments, so the examples' bounds and "
                      "the step's token count cannot reach it")
    return BatchingPlan(packed=True, examples_per_step=examples, batch_size=examples, grad_accum=1,
                        batch_tokens=budget, attention=attention,
                        reason=f"{attention} attention, position ids restarting per example")


# ---------------------------------------------------------------------------------------------------------------
# A step's examples -> forward passes
# ---------------------------------------------------------------------------------------------------------------

def token_budget_groups(lengths: list[int], budget: int, min_groups: int = 1) -> list[range]:
    """Consecutive runs of examples (indices into `lengths`): as few as passes of at most `budget` tokens allow (an
    example longer than the budget runs alone), or `min_groups` when that is more (every process of a launched group
    then runs the same number of passes), and as even in tokens as that number allows: the peak memory follows the
    largest pass, and a short pass left over at the end would pay a whole pass's fixed cost for a few examples."""
    if min_groups > len(lengths):
        raise RuntimeError(f"cannot run {len(lengths)} examples in {min_groups} forward passes; every process "
                           "of a launched group needs as many examples per step as the others")
    count = max(len(_runs_under(lengths, budget)), min_groups)
    # the smallest cap that still needs no more than `count` runs (the number of runs only falls as the cap rises)
    low, high = 1, max(budget, 1)
    while low < high:
        middle = (low + high) // 2
        if len(_runs_under(lengths, middle)) <= count:
            high = middle
        else:
            low = middle + 1
    groups = _runs_under(lengths, low)
    while len(groups) < count:
        splittable = [g for g in groups if len(g) > 1]
        largest = max(splittable, key=lambda g: sum(lengths[i] for i in g))
        # the cut that leaves the two halves closest in tokens
        cut = min(range(largest.start + 1, largest.stop),
                  key=lambda c: abs(sum(lengths[largest.start:c]) - sum(lengths[c:largest.stop])))
        at = groups.index(largest)
        groups[at:at + 1] = [range(largest.start, cut), range(cut, largest.stop)]
    return groups


def _runs_under(lengths: list[int], cap: int) -> list[range]:
    """Greedy in order: a new run when the next example would take the current one over `cap` tokens."""
    runs: list[range] = []
    start, tokens = 0, 0
    for index, length in enumerate(lengths):
        if index > start and tokens + length > cap:
            runs.append(range(start, index))
            start, tokens = index, 0
        tokens += length
    if lengths:
        runs.append(range(start, len(lengths)))
    return runs


def packed_passes(row: dict[str, Any], lengths: list[int], groups: list[range]) -> list[dict[str, Any]]:
    """Cut a padding-free row (trl's collator output for a whole step) into one input dict per group of examples."""
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    width = row["input_ids"].shape[1]
    passes = []
    for group in groups:
        begin, end = offsets[group.start], offsets[group.stop]
        own = lengths[group.start:group.stop]
        part: dict[str, Any] = {}
        for key, value in row.items():
            if key in ("cu_seq_lens_q", "cu_seq_lens_k"):
                part[key] = torch.tensor(offsets[group.start:group.stop + 1], dtype=value.dtype,
                                         device=value.device) - begin
            elif key in ("max_length_q", "max_length_k"):
                part[key] = max(own)
            elif key == "seq_idx":  # which example each token belongs to, counted from the pass's first
                part[key] = value[:, begin:end] - group.start
            elif torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == width:
                part[key] = value[:, begin:end]
            else:
                raise ValueError(f"packed batch key {key!r}: kobench does not know how to split it into passes")
        passes.append(part)
    return passes


class KobenchSFTTrainer(SFTTrainer):
    """trl's SFTTrainer that runs each optimizer step as planned (`BatchingPlan`) and counts what the passes held."""

    def __init__(self, *args: Any, batching: BatchingPlan, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batching = batching
        # trl's padded collator stays the evaluation collator, so eval losses are computed exactly as before
        self.packed_collator = (DataCollatorForLanguageModeling(pad_token_id=self.data_collator.pad_token_id,
                                                                padding_free=True) if batching.packed else None)
        self.steps_run: set[int] = set()  # the optimizer steps this process ran (a resumed run: since the checkpoint)
        self.pass_count = 0
        self.pass_tokens = 0  # tokens in the forward passes, padding included
        self.real_tokens: Any = 0  # tokens of the examples (a device tensor sum under padding: no sync per step)

    def get_train_dataloader(self) -> Any:
        if self.packed_collator is None:
            return super().get_train_dataloader()
        padded, self.data_collator = self.data_collator, self.packed_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = padded

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        self.steps_run.add(self.state.global_step)
        if self.packed_collator is None:
            self.pass_count += 1
            self.pass_tokens += inputs["input_ids"].numel()
            self.real_tokens = self.real_tokens + inputs["attention_mask"].sum()
            return super().training_step(model, inputs, num_items_in_batch)
        if num_items_in_batch is None:  # plan_batching checked the forward takes it; the Trainer then counts it
            raise RuntimeError("packed training needs the step's token count (num_items_in_batch) from the Trainer")
        lengths = inputs["cu_seq_lens_q"].diff().tolist()
        groups = token_budget_groups(lengths, self.batching.batch_tokens)
        if self.accelerator.num_processes > 1:
            # the same number of passes on every process, so their collectives (DDP, FSDP) pair up
            counts = self.accelerator.gather(torch.tensor([len(groups)], device=self.accelerator.device))
            groups = token_budget_groups(lengths, self.batching.batch_tokens, min_groups=int(counts.max()))
        self.pass_count += len(groups)
        self.pass_tokens += sum(lengths)
        self.real_tokens = self.real_tokens + sum(lengths)
        loss = None
        for index, part in enumerate(packed_passes(inputs, lengths, groups)):
            # like the Trainer's gradient accumulation: gradients are reduced across processes after the last pass
            last = index == len(groups) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                part_loss = super().training_step(model, part, num_items_in_batch)
            loss = part_loss if loss is None else loss + part_loss
        return loss

    def batching_record(self) -> dict[str, Any]:
        """The plan and what this process's passes held (pad_fraction: the share of padding in them)."""
        real, steps = int(self.real_tokens), len(self.steps_run)
        return {**self.batching.to_record(), "forward_passes": self.pass_count,
                "passes_per_step": round(self.pass_count / steps, 3) if steps else None,
                "tokens_in_passes": self.pass_tokens, "example_tokens": real,
                "pad_fraction": round(1 - real / self.pass_tokens, 4) if self.pass_tokens else None}
