"""Does batching pay for greedy decoding on this CPU? Milliseconds per generated token of an embedded model at
batch 1, 2, 4 and 8 (8 prompts, a fixed number of new tokens), in rounds so that drift shows.

    python bench/cpu_decode_batch.py                      # gemma3-270m, 32 new tokens, 2 rounds
    python bench/cpu_decode_batch.py --model smollm2-135m --new-tokens 64 --rounds 3

Run it on a quiet machine: other processes on the cores change the answer (see docs/performance.md).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m", help="an embedded model alias")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.models import EMBEDDED_MODELS, convert_embedded

    path = convert_embedded(EMBEDDED_MODELS[args.model])
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    base = "다음 대화를 읽고 요약하세요. " * 12
    prompts = [base + f"예시 {i}번 문장입니다." * (1 + i % 3) for i in range(8)]

    def ms_per_token(batch: int) -> float:
        began = time.perf_counter()
        for start in range(0, len(prompts), batch):
            encoded = tokenizer(prompts[start:start + batch], return_tensors="pt", padding=True)
            with torch.no_grad():
                model.generate(**encoded, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                               do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return (time.perf_counter() - began) / (len(prompts) * args.new_tokens) * 1000

    ms_per_token(1)  # warm-up
    print(f"{args.model}, {torch.get_num_threads()} threads, {args.new_tokens} new tokens, ms per generated token")
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}: " + ", ".join(f"batch {b}: {ms_per_token(b):.1f}" for b in (1, 2, 4, 8)),
              flush=True)


if __name__ == "__main__":
    main()
