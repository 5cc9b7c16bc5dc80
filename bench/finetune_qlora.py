"""QLoRA fine-tuning of an EXAONE-3.5-7.8B-shaped model: peak GPU memory and training tokens/s.

The model is a randomly initialised LlamaConfig with EXAONE-3.5-7.8B's shape (hidden 4096, 32 layers, 32 heads, 8 KV
heads, intermediate 14336, vocab 102400, untied embeddings): no checkpoint to download, same memory and compute.
Training goes through the same code as `kobench finetune` (finetune.recipe.finetune with random_init=True): NF4 +
double quantization + bf16 compute, LoRA r=16 on all linear layers, gradient checkpointing, completion-only loss,
batch 1, sequences of --seq-len tokens (chat examples built to overflow it, then truncated to exactly --seq-len).

Tokens/s is measured over the steps after --warmup (from the recipe's loss_log.csv, one row per step); peak memory is
torch's peak allocated (and reserved) during training. Writes $OUT/finetune_qlora.json ($OUT defaults to ./bench_out).
Needs torch, transformers, peft, trl, datasets and bitsandbytes (a CUDA GPU), not lm-eval.

    python bench/finetune_qlora.py --steps 20           # on a GPU: QLoRA, seq len 2048
    python bench/finetune_qlora.py --tiny --steps 3     # a 2-layer config on CPU (LoRA: no 4-bit on CPU) in a minute
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
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


def exaone_35_7_8b() -> LlamaConfig:
    """EXAONE-3.5-7.8B's shape as a Llama (its own code is a Llama with renamed modules)."""
    return LlamaConfig(vocab_size=102400, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                       rope_theta=1_000_000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def tiny_config() -> LlamaConfig:
    """The same family at toy size, for checking the script on a CPU."""
    return LlamaConfig(vocab_size=102400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                       tie_word_embeddings=False)


def build_tokenizer() -> Any:
    """A small byte-level BPE (its ids all fit the 102400-row embedding); real vocabularies change nothing here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 8, trainer=trainer)
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


def steady_rate(loss_log: Path, warmup: int) -> dict[str, float | None]:
    """Tokens/s and seconds/step between the first step after warm-up and the last step (train rows only)."""
    with open(loss_log, encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["train_loss"]]
    rows = [r for r in rows if int(r["step"]) >= warmup]
    if len(rows) < 2:
        return {"tokens_per_s": None, "s_per_step": None}
    first, last = rows[0], rows[-1]
    seconds = float(last["elapsed_s"]) - float(first["elapsed_s"])
    tokens = float(last["num_tokens"]) - float(first["num_tokens"])
    steps = int(last["step"]) - int(first["step"])
    return {"tokens_per_s": round(tokens / seconds, 1), "s_per_step": round(seconds / steps, 3)}


def adapter_parameters(directory: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(directory / "adapter_model.safetensors"), framework="pt") as handle:
        return sum(_numel(handle.get_slice(key).get_shape()) for key in handle.keys())


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer config, LoRA, on CPU: checks the script runs")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the tokens/s figure")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = parser.parse_args()

    from finetune.config import FinetuneConfig
    from finetune.recipe import finetune

    on_gpu = torch.cuda.is_available() and not args.tiny
    if not on_gpu and not args.tiny:
        sys.exit("no CUDA GPU: QLoRA needs one. Use --tiny to check the script on a CPU")
    shape = tiny_config() if args.tiny else exaone_35_7_8b()
    seq_len = min(args.seq_len, 256) if args.tiny else args.seq_len
    work = Path(tempfile.mkdtemp(prefix="kobench-qlora-"))
    model_dir = work / ("tiny-llama" if args.tiny else "exaone-3.5-7.8b-shape")
    model_dir.mkdir()
    shape.save_pretrained(model_dir)  # config.json only: random_init builds the weights
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(model_dir)
    data = work / "examples.jsonl"
    # the recipe holds out 10% for validation: enough examples for every step of batch 1
    write_examples(data, tokenizer, n=args.steps + max(2, args.steps // 9 + 1), seq_len=seq_len)

    config = FinetuneConfig.from_preset(
        "balanced", model=str(model_dir), data=str(data), method="lora" if args.tiny else "qlora",
        random_init=True, max_steps=args.steps, eval_steps=args.steps, logging_steps=1, batch_size=1,
        grad_accum=1, lora_r=args.lora_r, lora_alpha=2 * args.lora_r, max_length=seq_len,
        device="cuda" if on_gpu else "cpu", output=str(work / "adapter"), evaluate=False)
    started = time.perf_counter()
    result = finetune(config, progress=lambda event, **info: print(event, info, flush=True)
                      if event in ("status", "train_log") else None)
    wall = time.perf_counter() - started
    training = result.meta["training"]
    out: dict[str, Any] = {
        "shape": "tiny (2 layers)" if args.tiny else "EXAONE-3.5-7.8B (LlamaConfig, random init)",
        "config": shape.to_diff_dict(), "method": config.method, "quantization": "nf4 + double quant, bf16 compute"
        if config.method == "qlora" else None,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "target_modules": "all-linear",
                 "trainable_params": adapter_parameters(Path(result.output))},
        "seq_len": seq_len, "batch_size": 1, "steps": training["steps"], "warmup_steps_excluded": args.warmup,
        **{f"steady_{k}": v for k, v in steady_rate(Path(result.output) / "loss_log.csv", args.warmup).items()},
        "overall_tokens_per_s": training["tokens_per_s"], "train_tokens": training["train_tokens"],
        "train_wall_s": training["wall_s"], "script_wall_s": round(wall, 1),
        "peak_mem_mb": training["peak_mem_mb"], "losses": {"first": None, "final": training["final_train_loss"]},
        "device": torch.cuda.get_device_name(0) if on_gpu else platform.processor() or "cpu",
        "versions": result.meta["versions"],
    }
    if on_gpu:
        out["peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    with open(Path(result.output) / "loss_log.csv", encoding="utf-8") as handle:
        losses = [float(r["train_loss"]) for r in csv.DictReader(handle) if r["train_loss"]]
    out["losses"]["first"] = losses[0] if losses else None
    target = Path(args.out)
    target.mkdir(parents=True, exist_ok=True)
    (target / "finetune_qlora.json").write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({k: out[k] for k in ("shape", "method", "seq_len", "steps", "steady_tokens_per_s",
                                          "steady_s_per_step", "peak_mem_mb")}, default=str))


if __name__ == "__main__":
    main()
