"""QLoRA fine-tuning of an EXAONE-3.5-7.8B-shaped model: `kobench finetune` against a plain trl + peft +
bitsandbytes script with the same hyper-parameters on the same data, in the same run; optionally DDP on several GPUs.

The model is a randomly initialised LlamaConfig with EXAONE-3.5-7.8B's shape (hidden 4096, 32 layers, 32 heads, 8 KV
heads, intermediate 14336, vocab 102400, untied embeddings): no checkpoint to download, same memory and compute.
Both sides train from the same random bf16 checkpoint: NF4 + double quantization + bf16 compute, LoRA r=16 on all
linear layers, gradient checkpointing, completion-only loss, lr 1e-4 cosine, seed 1234, examples truncated at
--seq-len, the same examples in the same order.

Data (--data):
  real       (default) kobench's own fine-tuning records: every task's train split through finetune.data
             (build_sft_data, lm-eval's prompts, the kobench chat template), short examples of varying length;
             micro-batch 4 x gradient accumulation 4 (16 examples an optimizer step). The tokenizer is a byte-level
             BPE of 4,000 tokens trained on the tasks' texts, whose example lengths come out close to a 262k-token
             multilingual tokenizer's (gemma3's: mean 283 against 276 tokens).
  synthetic  chat examples built to overflow --seq-len, truncated to exactly --seq-len tokens (about 256 answer
             tokens in the loss), batch 1: nothing to pad, nothing to pack.

Sides (--sides), each in its own process so each has its own CUDA context and peak:
  plain          trl's documented QLoRA recipe (BitsAndBytesConfig, prepare_model_for_kbit_training, LoraConfig,
                 SFTConfig, SFTTrainer with its default padded collator), nothing else; a counter outside the
                 trainer records what its batches held
  kobench        finetune.recipe.finetune (`kobench finetune --method qlora`) with the same --batch-size and
                 --grad-accum: each step's examples packed without padding into passes of at most --batch-tokens
  kobench-liger  the same with --liger (Liger's fused RMSNorm, RoPE, SwiGLU)
  ddp            `kobench finetune` under `accelerate launch --config_file configs/accelerate/ddp.yaml` on --gpus GPUs

Tokens/s counts the examples' own tokens (not padding: trl's num_tokens on both sides), over the steps after
--warmup, from each side's per-step log (summed over the processes under DDP); both sides train the same examples,
so the seconds for those steps compare directly. Peak memory is torch's peak allocated (and reserved) in the training
process (rank 0 under DDP). Loss agreement: the per-step train losses against the plain side's (LoRA dropout draws
different masks on each side, so they are not bit-identical; --lora-dropout 0 removes that noise). The FLOP rate
counts 6 x (linear-layer parameters) per example token, against the card's bf16 matrix rate.
Writes $OUT/finetune_qlora.json ($OUT defaults to ./bench_out).

    python bench/finetune_qlora.py --sides plain,kobench,kobench-liger       # GPU: real data, 24 steps of 16
    python bench/finetune_qlora.py --lora-dropout 0 --sides plain,kobench    # the losses without dropout noise
    python bench/finetune_qlora.py --data synthetic --steps 20               # 2,048-token examples, batch 1
    python bench/finetune_qlora.py --steps 20 --sides kobench,ddp --gpus 2    # DDP against 1 GPU
    python bench/finetune_qlora.py --tiny --steps 3 --sides plain,kobench    # 2-layer, CPU, LoRA: a check
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import LlamaConfig  # noqa: E402

SENTENCES = [
    "서울은 한국의 수도이다.", "물은 100도에서 끓는다.", "일주일은 7일이다.", "김치는 한국 음식이다.",
    "태양은 동쪽에서 뜬다.", "부산은 남해에 접해 있다.", "하루는 24시간이다.", "세종대왕이 한글을 만들었다.",
    "임대차 계약이 끝나면 보증금을 돌려받는다.", "회의는 내일 오후 세 시에 시작한다.", "오늘 점심은 김밥을 먹었다.",
    "전세 계약 전에 등기부등본을 확인해야 한다.", "The quick brown fox jumps over the lazy dog.",
]


SEED = 1234
TASK_TOKENIZER_VOCAB = 4000
# per --data: micro-batch, gradient accumulation, optimizer steps (24 steps of 16 examples: about 30 s a side on an
# H100 next to ~25 s of loading, so three sides fit in about four minutes)
DATA_DEFAULTS = {"real": {"batch_size": 4, "grad_accum": 4, "steps": 24},
                 "synthetic": {"batch_size": 1, "grad_accum": 1, "steps": 20}}
BF16_MATMUL_FLOPS = 798e12  # an H100's 8192^3 bf16 product, /work/.library/device/KINDS.md (an H200's: 769-798)


def exaone_35_7_8b() -> LlamaConfig:
    """EXAONE-3.5-7.8B's shape as a Llama (its own code is a Llama with renamed modules)."""
    return LlamaConfig(vocab_size=102400, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                       rope_theta=1_000_000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def tiny_config() -> LlamaConfig:
    """The same family at toy size, for checking the script on a CPU (both tokenizers' ids fit 4,096 rows)."""
    return LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                       tie_word_embeddings=False)


def build_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE trained on `texts` (its ids all fit the 102400-row embedding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def text_of(tokenizer: Any, n_tokens: int, offset: int) -> str:
    """Sentences (rotated by `offset`, so examples differ) until the text is at least n_tokens long."""
    parts: list[str] = []
    i = offset
    while len(tokenizer.encode(" ".join(parts), add_special_tokens=False)) < n_tokens:
        parts.extend(SENTENCES[(i + k) % len(SENTENCES)] for k in range(20))
        i += 7
    return " ".join(parts)


def write_examples(path: Path, tokenizer: Any, n: int, seq_len: int) -> None:
    """Chat examples of a ~(seq_len - 256)-token question and a 512-token answer: each overflows seq_len, so it is
    truncated to exactly seq_len tokens with about 256 answer tokens in the loss."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            messages = [{"role": "user", "content": text_of(tokenizer, seq_len - 256, i)},
                        {"role": "assistant", "content": text_of(tokenizer, 512, i + 3)}]
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


def training_tasks() -> list[str]:
    """The kobench tasks `kobench finetune --task` can train on: those with a train split."""
    from harness.tasks import discover_tasks

    return sorted(name for name, info in discover_tasks().items() if info.raw.get("training_split")
                  and info.output_type in ("multiple_choice", "generate_until"))


def example_lengths(tokenizer: Any, records: list[dict[str, Any]], seq_len: int) -> list[int]:
    """Tokens of each prompt-completion record as trl tokenizes it (prompt, then completion), truncated."""
    lengths = []
    for record in records:
        prompt = tokenizer.apply_chat_template(record["prompt"], tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=False)
        completion = whole[len(prompt):] if whole.startswith(prompt) else whole
        n = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        n += len(tokenizer(completion, add_special_tokens=False).input_ids)
        lengths.append(min(n, seq_len))
    return lengths


def prepare(work: Path, tiny: bool, data: str, steps: int, seq_len: int) -> dict[str, Any]:
    """The shape's config, a tokenizer with a chat template, and the prompt-completion records kobench makes of the
    data (the plain side trains those same records)."""
    import statistics

    from finetune.data import build_sft_data
    from finetune.template import ensure_chat_template

    shape = tiny_config() if tiny else exaone_35_7_8b()
    model_dir = work / ("tiny-llama" if tiny else "exaone-3.5-7.8b-shape")
    model_dir.mkdir()
    shape.save_pretrained(model_dir)  # config.json only: the build side writes random weights once
    source: dict[str, Any]
    if data == "real":
        tasks = training_tasks()
        sft = build_sft_data(tasks, None, SEED)
        texts = [m["content"] for e in sft.train + sft.eval for m in e.prompt + e.completion]
        tokenizer = build_tokenizer(texts, TASK_TOKENIZER_VOCAB)
        source = {"tasks": tasks}
    else:
        tokenizer = build_tokenizer(SENTENCES * 8, 600)
        examples = work / "examples.jsonl"
        # the recipe holds out 10% for validation: enough examples for every step of batch 1 on up to 8 GPUs
        write_examples(examples, tokenizer, n=8 * steps + max(2, 8 * steps // 9 + 1), seq_len=seq_len)
        sft = build_sft_data([], str(examples), SEED)
        source = {"file": str(examples)}
    ensure_chat_template(tokenizer)
    tokenizer.save_pretrained(model_dir)
    records = [example.to_record() for example in sft.train]
    records_file = work / "train_records.jsonl"
    with open(records_file, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    lengths = example_lengths(tokenizer, records, seq_len)
    return {"model_dir": str(model_dir), **source, "records": str(records_file), "seq_len": seq_len,
            "shape": shape.to_diff_dict(), "linear_params": linear_params(shape),
            "examples": {"train": len(sft.train), "validation": len(sft.eval),
                         "tokens_mean": round(statistics.mean(lengths), 1), "tokens_median": statistics.median(lengths),
                         "tokens_max": max(lengths), "tokens_min": min(lengths)}}


def steady_rate(loss_log: Path, warmup: int) -> dict[str, float | None]:
    """Tokens/s, seconds and seconds/step between the first step after warm-up and the last step (train rows)."""
    with open(loss_log, encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["train_loss"]]
    rows = [r for r in rows if int(r["step"]) >= warmup]
    if len(rows) < 2:
        return {"tokens_per_s": None, "s_per_step": None, "seconds": None, "steps": None}
    first, last = rows[0], rows[-1]
    seconds = float(last["elapsed_s"]) - float(first["elapsed_s"])
    tokens = float(last["num_tokens"]) - float(first["num_tokens"])
    steps = int(last["step"]) - int(first["step"])
    return {"tokens_per_s": round(tokens / seconds, 1), "s_per_step": round(seconds / steps, 3),
            "seconds": round(seconds, 2), "steps": f"{first['step']}-{last['step']}"}


def adapter_parameters(directory: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(directory / "adapter_model.safetensors"), framework="pt") as handle:
        return sum(_numel(handle.get_slice(key).get_shape()) for key in handle.keys())


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def linear_params(config: LlamaConfig) -> int:
    """Parameters of the linear layers a token passes through (attention, MLP, lm_head)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (config.head_dim or h // config.num_attention_heads)
    q = config.num_attention_heads * (config.head_dim or h // config.num_attention_heads)
    return layers * (h * q + 2 * h * kv + q * h + 3 * h * i) + h * config.vocab_size


def side_build(plan: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The random bf16 checkpoint both sides load (kobench's random-init cache), with the tokenizer beside it."""
    from transformers import AutoTokenizer

    from finetune.recipe import random_checkpoint

    began = time.perf_counter()
    path = random_checkpoint(plan["model_dir"], plan["device"], lambda *a, **k: print(*a, k, flush=True))
    AutoTokenizer.from_pretrained(plan["model_dir"]).save_pretrained(path)
    return {"checkpoint": path, "s": round(time.perf_counter() - began, 1)}


def side_kobench(plan: dict[str, Any], args: argparse.Namespace) -> dict[str, Any] | None:
    from finetune.config import FinetuneConfig
    from finetune.recipe import finetune, random_checkpoint

    hp = plan["hyperparameters"]
    # QLoRA (random_init) loads the random checkpoint the build side cached; LoRA's random_init would draw weights of
    # its own, so on the CPU kobench is pointed at that checkpoint instead: both sides start from the same weights
    qlora = plan["method"] == "qlora"
    model = plan["model_dir"] if qlora else random_checkpoint(plan["model_dir"], plan["device"], lambda *a, **k: None)
    config = FinetuneConfig.from_preset(
        "balanced", model=model, tasks=plan.get("tasks") or [], data=plan.get("file"),
        method=plan["method"], random_init=qlora, max_steps=hp["steps"], eval_steps=hp["steps"], logging_steps=1,
        batch_size=hp["batch_size"], grad_accum=hp["grad_accum"], batch_tokens=hp["batch_tokens"],
        learning_rate=hp["learning_rate"], lora_r=hp["lora_r"], lora_alpha=hp["lora_alpha"],
        lora_dropout=hp["lora_dropout"], max_length=plan["seq_len"], device=plan["device"],
        output=str(Path(plan["work"]) / f"adapter-{args.side}"), evaluate=False, liger=args.side == "kobench-liger",
        seed=SEED)
    result = finetune(config, progress=lambda event, **info: print(event, info, flush=True)
                      if event in ("status", "train_log") else None)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    training = result.meta["training"]
    batching = training["batching"]
    out = {"steps": training["steps"], "processes": training.get("processes", 1), "train_wall_s": training["wall_s"],
           "peak_allocated_mb": training["peak_mem_mb"], "trainable_params": adapter_parameters(Path(result.output)),
           "batching": batching["kind"], "batch_tokens": batching["batch_tokens"],
           "passes_per_step": batching["passes_per_step"], "pad_fraction": batching["pad_fraction"],
           **log_figures(Path(result.output) / "loss_log.csv", plan["warmup"])}
    if plan["device"].startswith("cuda"):
        out["peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return out


class BatchCounter:
    """Wraps the plain trainer's collator without changing a batch: records the tokens each batch holds (padding
    included) and the examples' own tokens, batch by batch."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.batches: list[tuple[int, int]] = []

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        self.batches.append((batch["input_ids"].numel(), int(batch["attention_mask"].sum())))
        return batch


def side_plain(plan: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """trl's documented QLoRA recipe, written as a user would; only the per-step log is kobench's (LossLog), and a
    counter outside the trainer records what its batches held."""
    from datasets import load_dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from finetune.recipe import LossLog, random_checkpoint

    hp = plan["hyperparameters"]
    on_gpu = plan["device"].startswith("cuda")
    checkpoint = random_checkpoint(plan["model_dir"], plan["device"], lambda *a, **k: None)
    tokenizer = AutoTokenizer.from_pretrained(plan["model_dir"])
    if on_gpu:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map={"": 0})
        model = prepare_model_for_kbit_training(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    peft_config = LoraConfig(r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                             target_modules="all-linear", task_type="CAUSAL_LM")
    dataset = load_dataset("json", data_files=plan["records"], split="train")
    output = Path(plan["work"]) / "plain"
    config = SFTConfig(output_dir=str(output), max_steps=hp["steps"], per_device_train_batch_size=hp["batch_size"],
                       gradient_accumulation_steps=hp["grad_accum"], learning_rate=hp["learning_rate"],
                       lr_scheduler_type="cosine", warmup_steps=0.03, max_length=plan["seq_len"],
                       completion_only_loss=True, gradient_checkpointing=True, bf16=on_gpu, use_cpu=not on_gpu,
                       logging_steps=1, save_strategy="no", report_to="none", seed=SEED, disable_tqdm=True)
    output.mkdir(parents=True, exist_ok=True)
    log = LossLog(output / "loss_log.csv")
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[log])
    counter = BatchCounter(trainer.data_collator)
    trainer.data_collator = counter
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    trainer.train()
    steps = trainer.state.global_step
    # the dataloader collates one batch ahead: the trained ones are the first steps x accumulation
    used = counter.batches[:steps * hp["grad_accum"]]
    in_passes, own = sum(b[0] for b in used), sum(b[1] for b in used)
    out = {"steps": steps, "processes": 1, "train_wall_s": round(time.perf_counter() - began, 1),
           "batching": "padded", "passes_per_step": round(len(used) / steps, 3),
           "pad_fraction": round(1 - own / in_passes, 4), **log_figures(output / "loss_log.csv", plan["warmup"])}
    if on_gpu:
        out["peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return out


def log_figures(loss_log: Path, warmup: int) -> dict[str, Any]:
    with open(loss_log, encoding="utf-8") as handle:
        losses = [float(r["train_loss"]) for r in csv.DictReader(handle) if r["train_loss"]]
    rate = steady_rate(loss_log, warmup)
    return {"steady_tokens_per_s": rate["tokens_per_s"], "steady_s_per_step": rate["s_per_step"],
            "steady_seconds": rate["seconds"], "steady_steps": rate["steps"], "train_losses": losses}


SIDES = {"build": side_build, "plain": side_plain, "kobench": side_kobench, "kobench-liger": side_kobench,
         "ddp": side_kobench}


def run_side(side: str, plan_path: Path, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    me = [str(Path(__file__).resolve()), "--side", side, "--plan", str(plan_path)]
    if side == "ddp":
        config = Path(__file__).resolve().parent.parent / "configs" / "accelerate" / "ddp.yaml"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                   "--num_processes", str(args.gpus), "--main_process_port", str(free_port())]
        command += me
    else:
        command = [sys.executable, *me]
    began = time.perf_counter()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n===== {side} =====\n")
        handle.flush()
        # on a CPU the launched ranks join over gloo (the config's MULTI_GPU picks torchrun's launcher)
        env = {**os.environ, **({} if plan["device"].startswith("cuda") else {"ACCELERATE_USE_CPU": "true"})}
        proc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    print(f"  {side:14s} {time.perf_counter() - began:7.1f} s  (exit {proc.returncode})", flush=True)
    result_path = Path(plan["work"]) / f"{side}.json"
    if proc.returncode != 0 or not result_path.exists():
        tail = log.read_text(encoding="utf-8", errors="replace")[-2500:]
        print(tail, flush=True)
        return {"error": f"exit {proc.returncode}: {tail[-800:]}"}
    return json.loads(result_path.read_text(encoding="utf-8"))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loss_agreement(reference: list[float], other: list[float]) -> dict[str, Any]:
    """Per-step train losses against the reference side's: relative differences, and two paired tests of 'no
    systematic difference' (a sign test, exact; a t-test on the relative differences when scipy is there)."""
    import math
    import statistics

    def figure(x: float) -> float:
        return float(f"{x:.3g}")

    pairs = list(zip(reference, other))
    relative = [(b - a) / abs(a) for a, b in pairs]
    out: dict[str, Any] = {"steps_compared": len(pairs), "max_rel_diff": figure(max(map(abs, relative))),
                           "mean_abs_rel_diff": figure(statistics.mean(map(abs, relative))),
                           "mean_rel_diff": figure(statistics.mean(relative)),
                           "first_step_rel_diff": figure(relative[0])}
    higher = sum(r > 0 for r in relative)
    nonzero = sum(r != 0 for r in relative)
    tail = sum(math.comb(nonzero, k) for k in range(min(higher, nonzero - higher) + 1)) / 2 ** nonzero
    out["sign_test"] = {"higher": higher, "of": nonzero, "p": round(min(1.0, 2 * tail), 4) if nonzero else None}
    if len(relative) > 2 and statistics.stdev(relative) > 0:
        t = statistics.mean(relative) / (statistics.stdev(relative) / math.sqrt(len(relative)))
        out["paired_t"] = figure(t)
        try:
            from scipy import stats

            out["paired_t_p"] = round(float(2 * stats.t.sf(abs(t), len(relative) - 1)), 4)
        except ImportError:
            pass
    return out


def compare(report: dict[str, Any], linear: int) -> None:
    """Speed-ups over the plain side (and DDP over 1 GPU), loss agreement, FLOP-rate fractions."""
    sides = report["sides"]
    for result in sides.values():
        rate = result.get("steady_tokens_per_s")
        if rate and report["device"] != "cpu":
            result["model_tflops_per_s"] = round(6 * linear * rate / 1e12, 1)
            result["fraction_of_bf16_matmul_rate"] = round(6 * linear * rate / BF16_MATMUL_FLOPS, 3)
    plain = sides.get("plain", {})
    for name, result in sides.items():
        if name == "plain" or "steady_tokens_per_s" not in result:
            continue
        base = sides["kobench"] if name == "ddp" and "kobench" in sides else plain
        if base.get("steady_tokens_per_s") and result.get("steady_tokens_per_s"):
            result["speedup_over_" + ("kobench_1gpu" if base is not plain else "plain")] = round(
                result["steady_tokens_per_s"] / base["steady_tokens_per_s"], 3)
        if name != "ddp" and plain.get("train_losses") and result.get("train_losses"):
            result["loss_vs_plain"] = loss_agreement(plain["train_losses"], result["train_losses"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer config, LoRA, on CPU: checks the script runs")
    parser.add_argument("--data", choices=list(DATA_DEFAULTS), default="real",
                        help="real: kobench's task training records; synthetic: --seq-len-token examples, batch 1")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: 24 real, 20 synthetic)")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the tokens/s figure")
    parser.add_argument("--seq-len", type=int, default=2048, help="examples are truncated at this many tokens")
    parser.add_argument("--batch-size", type=int, help="micro-batch (default: 4 real, 1 synthetic)")
    parser.add_argument("--grad-accum", type=int, help="gradient accumulation (default: 4 real, 1 synthetic)")
    parser.add_argument("--batch-tokens", type=int, help="kobench sides: tokens per packed pass (default: kobench's)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="both sides; 0 for the exactness check")
    parser.add_argument("--sides", default="plain,kobench", help=f"comma-separated, of {', '.join(list(SIDES)[1:])}")
    parser.add_argument("--gpus", type=int, default=2, help="processes of the ddp side")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:  # a child: one side
        plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))
        result = SIDES[args.side](plan, args)
        if result is not None:
            (Path(plan["work"]) / f"{args.side}.json").write_text(json.dumps(result, default=str), encoding="utf-8")
        return

    on_gpu = torch.cuda.is_available() and not args.tiny
    if not on_gpu and not args.tiny:
        sys.exit("no CUDA GPU: QLoRA needs one. Use --tiny to check the script on a CPU")
    sides = args.sides.split(",")
    unknown = [s for s in sides if s not in SIDES or s == "build"]
    if unknown:
        parser.error(f"--sides {','.join(unknown)}: unknown; choose from {', '.join(list(SIDES)[1:])}")
    defaults = DATA_DEFAULTS[args.data]
    hyperparameters = {"steps": args.steps or defaults["steps"],
                       "batch_size": args.batch_size or defaults["batch_size"],
                       "grad_accum": args.grad_accum or defaults["grad_accum"], "batch_tokens": args.batch_tokens,
                       "learning_rate": 1e-4, "lr_schedule": "cosine, 3% warm-up", "lora_r": args.lora_r,
                       "lora_alpha": 2 * args.lora_r, "lora_dropout": args.lora_dropout,
                       "target_modules": "all-linear", "gradient_checkpointing": True, "completion_only_loss": True,
                       "seed": SEED}
    os.environ.setdefault("KOBENCH_CACHE", tempfile.mkdtemp(prefix="kobench-cache-"))  # the random checkpoint
    work = Path(tempfile.mkdtemp(prefix="kobench-qlora-"))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "finetune_qlora.log"
    log.write_text("", encoding="utf-8")
    began = time.perf_counter()
    seq_len = min(args.seq_len, 256) if args.tiny and args.data == "synthetic" else args.seq_len
    plan = {**prepare(work, args.tiny, args.data, hyperparameters["steps"], seq_len), "work": str(work),
            "device": "cuda" if on_gpu else "cpu", "method": "qlora" if on_gpu else "lora",
            "hyperparameters": hyperparameters, "warmup": args.warmup}
    plan_path = work / "plan.json"
    plan_path.write_text(json.dumps(plan), encoding="utf-8")
    report: dict[str, Any] = {
        "shape": "tiny (2 layers)" if args.tiny else "EXAONE-3.5-7.8B (LlamaConfig, random init)",
        "config": plan["shape"], "linear_params": plan["linear_params"], "method": plan["method"],
        "quantization": "nf4 + double quant, bf16 compute" if on_gpu else None, "data": args.data,
        "tasks": plan.get("tasks"), "examples": plan["examples"], "seq_len": plan["seq_len"],
        "hyperparameters": hyperparameters, "warmup_steps_excluded": args.warmup,
        "gpus_ddp": args.gpus if "ddp" in sides else None,
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu", "command": " ".join(sys.argv),
        "prepare_s": round(time.perf_counter() - began, 1), "sides": {}}
    report["build"] = run_side("build", plan_path, args, log)
    for side in sides:
        report["sides"][side] = run_side(side, plan_path, args, log)
        compare(report, plan["linear_params"])
        report["wall_s"] = round(time.perf_counter() - began, 1)
        (out_dir / "finetune_qlora.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    print(f"\n{'side':14s} {'tok/s':>8s} {'s/step':>7s} {'passes':>6s} {'pad':>5s} {'peak MiB':>9s} {'x plain':>7s}"
          "  loss vs plain")
    for name, r in report["sides"].items():
        loss = r.get("loss_vs_plain") or {}
        speed = r.get("speedup_over_plain") or r.get("speedup_over_kobench_1gpu")
        agreement = (f"max rel {loss['max_rel_diff']}, mean {loss['mean_rel_diff']:+}, sign-test p "
                     f"{loss['sign_test']['p']}") if loss else r.get("error", "")[:100]
        print(f"{name:14s} {r.get('steady_tokens_per_s') or 0:8.1f} {r.get('steady_s_per_step') or 0:7.3f} "
              f"{r.get('passes_per_step') or 0:6.2f} {r.get('pad_fraction') or 0:5.2f} "
              f"{r.get('peak_allocated_mb') or 0:9.0f} {speed or 0:7.2f}  {agreement}")
    print(f"wrote {out_dir / 'finetune_qlora.json'} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
