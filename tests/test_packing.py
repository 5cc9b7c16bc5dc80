"""Padding-free token-budget passes (finetune/packing.py): examples packed into one row stay apart, one optimizer
step of packed passes has the gradient of trl's padded batches with accumulation, and `kobench finetune` uses them
(or not, with --batch-tokens 0). Expected values come from each example run alone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune.config import FinetuneConfig
from finetune.packing import default_batch_tokens, packed_passes, plan_batching, token_budget_groups
from tests.conftest import kobench

# ---------------------------------------------------------------------------------------------------------------
# Grouping a step's examples into passes
# ---------------------------------------------------------------------------------------------------------------


def test_token_budget_groups_by_hand() -> None:
    # 3+4 = 7 fits 8, +2 would not; 2 alone (+7 would not fit); 7+1 = 8 fits: 3 passes, none can be smaller
    assert token_budget_groups([3, 4, 2, 7, 1], 8) == [range(0, 2), range(2, 3), range(3, 5)]
    # an example over the budget runs alone
    assert token_budget_groups([10, 2, 3], 5) == [range(0, 1), range(1, 3)]
    # 16 x 300 tokens under 4,096: two passes (13 + 3 would fit), evened out to 8 + 8
    assert token_budget_groups([300] * 16, 4096) == [range(0, 8), range(8, 16)]
    # at least 3 passes (another process runs 3): 17 tokens in 3 runs of at most 8 (7 would take 4)
    assert token_budget_groups([3, 4, 2, 7, 1], 100, min_groups=3) == [range(0, 2), range(2, 3), range(3, 5)]
    # at least 3 of four 1-token examples: no cap gives 3 runs (2 tokens: 2 runs, 1 token: 4), so 2 runs of 2 and
    # the first split in two
    assert token_budget_groups([1, 1, 1, 1], 100, min_groups=3) == [range(0, 1), range(1, 2), range(2, 4)]
    with pytest.raises(RuntimeError, match="cannot run 2 examples in 3 forward passes"):
        token_budget_groups([5, 5], 100, min_groups=3)


def test_default_budget_never_exceeds_one_padded_micro_batch() -> None:
    assert default_batch_tokens(batch_size=4, max_length=2048) == 4096
    assert default_batch_tokens(batch_size=1, max_length=1024) == 1024  # memory_efficient: one example's worth
    assert default_batch_tokens(batch_size=2, max_length=8192) == 8192  # one example may be that long anyway


def test_packed_passes_cut_at_example_boundaries() -> None:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]},
                {"input_ids": [6, 7, 8, 9], "labels": [-100, -100, 8, 9]}]
    row = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    first, second = packed_passes(row, [3, 2, 4], [range(0, 2), range(2, 3)])
    assert first["input_ids"].tolist() == [[1, 2, 3, 4, 5]] and first["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert first["labels"].tolist() == [[-100, 2, 3, -100, 5]]
    assert first["cu_seq_lens_q"].tolist() == [0, 3, 5] and first["max_length_q"] == 3
    assert first["seq_idx"].tolist() == [[0, 0, 0, 1, 1]]
    assert second["input_ids"].tolist() == [[6, 7, 8, 9]] and second["cu_seq_lens_k"].tolist() == [0, 4]
    assert second["seq_idx"].tolist() == [[0, 0, 0, 0]] and second["max_length_k"] == 4


# ---------------------------------------------------------------------------------------------------------------
# No cross-contamination: each example of a packed row computes what it computes alone
# ---------------------------------------------------------------------------------------------------------------

def _tiny(kind: str, attention: str) -> torch.nn.Module:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "attn_implementation": attention}
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**shape)).eval()
    # gemma3: a sliding-window layer whose window (4) is shorter than two of the examples
    return Gemma3ForCausalLM(Gemma3TextConfig(**shape, sliding_window=4,
                                              layer_types=["sliding_attention", "full_attention"])).eval()


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_examples_equal_the_examples_alone(kind: str, attention: str) -> None:
    model = _tiny(kind, attention)
    generator = torch.Generator().manual_seed(1)
    examples = [torch.randint(0, 97, (n,), generator=generator) for n in (5, 9, 1, 6)]
    labels = [torch.randint(0, 97, (len(e),), generator=generator) for e in examples]
    with torch.no_grad():
        alone = [model(e[None], use_cache=False).logits[0] for e in examples]
        bounds = torch.tensor([0, 5, 14, 15, 21], dtype=torch.int32)
        positions = torch.cat([torch.arange(len(e)) for e in examples])[None]  # restarting at each example
        packed = model(torch.cat(examples)[None], position_ids=positions, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds,
                       max_length_q=9, max_length_k=9, use_cache=False).logits[0]
        # the row read as one sequence mixes them: the check can tell
        mixed = model(torch.cat(examples)[None], use_cache=False).logits[0]
    for example, start, end in zip(alone, bounds[:-1].tolist(), bounds[1:].tolist()):
        assert torch.allclose(packed[start:end], example, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed[5:14], alone[1], atol=1e-3)
    for example, target, start, end in zip(alone, labels, bounds[:-1].tolist(), bounds[1:].tolist()):
        loss_alone = torch.nn.functional.cross_entropy(example, target)
        loss_packed = torch.nn.functional.cross_entropy(packed[start:end], target)
        assert loss_packed.item() == pytest.approx(loss_alone.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# One optimizer step: packed passes vs trl's padded batches with gradient accumulation vs the examples alone
# ---------------------------------------------------------------------------------------------------------------

def _chat_file(path: Path, n: int) -> Path:
    """Chat examples of 31 to 48 tokens, and one of 86 (so padded batches pad and a small budget splits)."""
    rows = [{"messages": [{"role": "user", "content": "서울 " * (1 + (i * 7) % 9) + f"{i}"},
                          {"role": "assistant", "content": "한국 " * ((1 + (i * 5) % 4) * (20 if i == 5 else 1))}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _trainer(model_dir: Path, data_file: Path, output: Path, batch_tokens: int) -> object:
    from transformers import AutoTokenizer

    from finetune.data import build_sft_data
    from finetune.recipe import build_trainer, ensure_pad_token, load_training_model
    from finetune.template import ensure_chat_template
    from harness.models import resolve_model

    config = FinetuneConfig.from_preset("balanced", model=str(model_dir), data=str(data_file), device="cpu",
                                        batch_size=2, grad_accum=3, batch_tokens=batch_tokens, lora_dropout=0.0,
                                        max_steps=2, eval_steps=2, learning_rate=1e-3, max_length=128)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ensure_chat_template(tokenizer)
    model = load_training_model(resolve_model(str(model_dir)), config, "cpu", lambda *a, **k: None)
    ensure_pad_token(tokenizer, model)
    data = build_sft_data([], str(data_file), seed=config.seed)
    output.mkdir()
    trainer = build_trainer(model, tokenizer, data, config, output, "cpu", lambda *a, **k: None)
    # LoRA B starts at zero (no gradient for A on step 1): the same random adapter on every trainer instead
    generator = torch.Generator().manual_seed(7)
    for _, parameter in sorted(trainer.model.named_parameters()):
        if parameter.requires_grad:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1
    return trainer


def _run_recording(trainer: object) -> tuple[dict[int, list[tuple[int, ...]]], list[dict[str, torch.Tensor]]]:
    """Train; returns each step's examples (token ids, as the batches held them) and each step's gradients (after
    the Trainer's clipping, before the optimizer)."""
    from transformers import TrainerCallback

    examples: dict[int, list[tuple[int, ...]]] = {}
    gradients: list[dict[str, torch.Tensor]] = []

    class Gradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            gradients.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    original = trainer.training_step

    def recording(model, inputs, num_items_in_batch=None):  # noqa: ANN001, ANN202
        ids = inputs["input_ids"]
        if "attention_mask" in inputs:  # padded rows
            rows = [tuple(ids[r][inputs["attention_mask"][r].bool()].tolist()) for r in range(ids.shape[0])]
        else:  # one packed row
            bounds = inputs["cu_seq_lens_q"].tolist()
            rows = [tuple(ids[0, a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])]
        examples.setdefault(trainer.state.global_step, []).extend(rows)
        return original(model, inputs, num_items_in_batch)

    trainer.training_step = recording
    trainer.add_callback(Gradients())
    trainer.train()
    return examples, gradients


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() / b[k].abs().max().item() for k in a)


def test_one_step_of_packed_passes_has_the_gradient_of_padded_accumulation(tiny_model: Path, tmp_path: Path) -> None:
    data_file = _chat_file(tmp_path / "chat.jsonl", 14)  # 13 train examples after the 10% hold-out
    # an 80-token budget splits each step of 6 examples into passes of one or two, and the longest example (86
    # tokens) is over it: it runs alone
    packed = _trainer(tiny_model, data_file, tmp_path / "packed", batch_tokens=80)
    padded = _trainer(tiny_model, data_file, tmp_path / "padded", batch_tokens=0)
    reference = _trainer(tiny_model, data_file, tmp_path / "reference", batch_tokens=0)
    assert packed.batching.packed and not padded.batching.packed
    assert (packed.args.per_device_train_batch_size, packed.args.gradient_accumulation_steps) == (6, 1)
    assert (padded.args.per_device_train_batch_size, padded.args.gradient_accumulation_steps) == (2, 3)
    lengths = sorted(len(row["input_ids"]) for row in packed.train_dataset)
    assert lengths[-1] > 80 and lengths[0] + lengths[1] <= 80

    packed_examples, packed_gradients = _run_recording(packed)
    padded_examples, padded_gradients = _run_recording(padded)
    # the same examples in every step (the sampler's order), two steps of 6
    assert {s: sorted(e) for s, e in packed_examples.items()} == {s: sorted(e) for s, e in padded_examples.items()}
    assert [len(packed_examples[s]) for s in (0, 1)] == [6, 6]
    assert packed.pass_count > 2 * 1 and padded.pass_count == 2 * 3
    record = packed.batching_record()
    assert record["kind"] == "padding-free" and record["pad_fraction"] == 0.0
    assert padded.batching_record()["pad_fraction"] > 0

    # step 1, computed independently: each example alone, token losses summed over the step / its completion tokens
    labels_of = {tuple(row["input_ids"]): row["labels"] for row in reference.train_dataset}
    model = reference.model
    model.train()
    total, count = 0.0, 0
    for ids in packed_examples[0]:
        labels = torch.tensor(labels_of[ids][1:])
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1]
        total = total + torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        count += int((labels != -100).sum())
    total = total / count
    total.backward()
    expected = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    norm = torch.sqrt(sum((g ** 2).sum() for g in expected.values()))
    clip = min(1.0, reference.args.max_grad_norm / (norm.item() + 1e-6))  # the Trainer clips before stepping
    expected = {n: g * clip for n, g in expected.items()}
    assert _relative(packed_gradients[0], expected) < 1e-5
    assert _relative(padded_gradients[0], expected) < 1e-5
    # step 2 starts from the same updated weights on both sides
    assert _relative(packed_gradients[1], padded_gradients[1]) < 1e-5
    packed_losses = [h["loss"] for h in packed.state.log_history if "loss" in h]
    padded_losses = [h["loss"] for h in padded.state.log_history if "loss" in h]
    assert packed_losses == pytest.approx(padded_losses, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The plan: packed only when it is safe, else padded with the reason
# ---------------------------------------------------------------------------------------------------------------

def test_plan_falls_back_to_padded_batches_with_the_reason() -> None:
    from transformers import BloomConfig, BloomForCausalLM

    llama = _tiny("llama", "sdpa")
    config = FinetuneConfig.from_preset("balanced", model="m", tasks=["t"], max_length=512)
    plan = plan_batching(llama, config)
    assert plan.packed and plan.batch_tokens == default_batch_tokens(2, 512) == 1024
    assert (plan.batch_size, plan.grad_accum) == (2, 1)
    assert plan_batching(llama, FinetuneConfig.from_preset("balanced", batch_tokens=0)).reason == "--batch-tokens 0"
    assert "NEFTune" in plan_batching(llama, FinetuneConfig.from_preset("balanced", neftune_alpha=5.0)).reason
    # ALiBi in its own modeling code: packed examples would see each other
    bloom = BloomForCausalLM(BloomConfig(vocab_size=97, hidden_size=32, n_layer=1, n_head=4))
    plan = plan_batching(bloom, config)
    assert not plan.packed and plan.reason.startswith("BloomForCausalLM does not run attention through")
    assert plan.describe().startswith("batching: trl's padded micro-batches of 2 x 1 accumulation steps, not packed")
    llama.config._attn_implementation = "paged|sdpa"
    assert "paged|sdpa is not one that keeps packed examples apart" in plan_batching(llama, config).reason


# ---------------------------------------------------------------------------------------------------------------
# Through the real entry point
# ---------------------------------------------------------------------------------------------------------------

def test_kobench_finetune_packs_by_default_and_batch_tokens_0_pads(tiny_model: Path, tmp_path: Path) -> None:
    data_file = _chat_file(tmp_path / "chat.jsonl", 14)
    common = ["finetune", "--model", str(tiny_model), "--data", str(data_file), "--batch-size", "2",
              "--grad-accum", "3", "--max-steps", "2", "--max-length", "64", "--lora-dropout", "0", "--no-eval",
              "--device", "cpu"]
    wide = {"COLUMNS": "400"}  # one status line per event in the captured console output
    packed = kobench(*common, "--output", str(tmp_path / "packed"), env=wide, check=True)
    padded = kobench(*common, "--batch-tokens", "0", "--output", str(tmp_path / "padded"), env=wide, check=True)
    assert "batching: each step's 6 examples packed without padding into forward passes of at most 128 tokens " \
           "(sdpa attention, position ids restarting per example)" in packed.stdout
    assert "batching: trl's padded micro-batches of 2 x 3 accumulation steps, not packed: --batch-tokens 0" \
           in padded.stdout
    packed_meta = json.loads((tmp_path / "packed" / "kobench_adapter.json").read_text())["training"]
    padded_meta = json.loads((tmp_path / "padded" / "kobench_adapter.json").read_text())["training"]
    # default budget: min(2 x 64, max(4096, 64)) = 128 tokens; 6 examples of 20-50 tokens: 2-4 passes a step
    assert packed_meta["batching"]["kind"] == "padding-free" and packed_meta["batching"]["batch_tokens"] == 128
    assert 2 <= packed_meta["batching"]["passes_per_step"] <= 4
    assert packed_meta["batching"]["pad_fraction"] == 0.0
    assert padded_meta["batching"]["kind"] == "padded" and padded_meta["batching"]["passes_per_step"] == 3
    assert padded_meta["batching"]["pad_fraction"] > 0
    assert packed_meta["hyperparameters"]["batch_tokens"] is None  # the default, resolved in the batching record
    assert padded_meta["hyperparameters"]["batch_tokens"] == 0
    # the same examples and the same loss: the logged train losses (4 decimals) and the eval losses agree
    assert packed_meta["mean_train_loss"] == pytest.approx(padded_meta["mean_train_loss"], rel=1e-5)
    assert packed_meta["eval_loss"] == pytest.approx(padded_meta["eval_loss"], rel=1e-5)
    assert packed_meta["train_tokens"] == padded_meta["train_tokens"]  # non-padding tokens, the same examples


def test_cli_negative_batch_tokens_is_one_error_line(tiny_model: Path, tmp_path: Path) -> None:
    proc = kobench("finetune", "--model", str(tiny_model), "--data", str(_chat_file(tmp_path / "c.jsonl", 4)),
                   "--batch-tokens", "-5", "--device", "cpu")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: --batch-tokens -5: must be a number of tokens per forward pass, or 0 for trl's padded micro-batches"]


def test_a_resumed_packed_fine_tune_continues_with_the_same_examples(tiny_model: Path, tmp_path: Path) -> None:
    """Resumed from its step-2 checkpoint, a packed run trains steps 3 and 4 on the examples and weights the
    uninterrupted run did: the same logged losses (the checkpoint's data position counts whole packed steps)."""
    import csv
    import shutil

    data_file = _chat_file(tmp_path / "chat.jsonl", 14)
    output = tmp_path / "adapter"
    args = ["finetune", "--model", str(tiny_model), "--data", str(data_file), "--batch-size", "2", "--grad-accum",
            "2", "--max-steps", "4", "--eval-steps", "2", "--max-length", "64", "--no-eval", "--device", "cpu",
            "--output", str(output)]

    def train_losses() -> dict[int, str]:
        with open(output / "loss_log.csv", encoding="utf-8") as handle:
            return {int(r["step"]): r["train_loss"] for r in csv.DictReader(handle) if r["train_loss"]}

    kobench(*args, check=True)
    uninterrupted = train_losses()
    # as if killed after the step-2 checkpoint: no later checkpoint, no adapter yet
    shutil.rmtree(output / "checkpoints" / "checkpoint-4")
    (output / "kobench_adapter.json").unlink()
    resumed = kobench(*args, env={"COLUMNS": "400"}, check=True)
    assert "resuming the interrupted fine-tune from checkpoint-2" in resumed.stdout
    assert list(uninterrupted) == [1, 2, 3, 4] and train_losses() == uninterrupted
