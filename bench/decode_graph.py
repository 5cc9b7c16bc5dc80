"""Decode time per step: `model.generate` (eager, dynamic cache) against kobench's static-cache loop
(harness/staticdecode.py), eager and replayed as a CUDA graph, on random bf16 models of real shapes, each against the
bandwidth floor; the generated tokens of the three compared row by row.

The workload is one bucket per (model, attention, batch): left-padded random prompts of --prompt tokens (row i
has i x 7 mod 64 padding tokens) and exactly --new greedy tokens (the generation config's EOS is removed, so every
row decodes the whole length). A decode step must read every weight once and the keys and values of every cached
token: floor = (weights + batch x (prompt + new/2) x kv bytes a token) / copy bandwidth, the bandwidth measured
here (bench/eval_speed.py's arithmetic). The static cache reads its full length (prompt + new) every step, so its
own floor is a little higher; both are reported.

    python bench/decode_graph.py                                  # GPU: EXAONE-3.5-7.8B and Llama-3.2-3B shapes
    python bench/decode_graph.py --models llama-3.2-3b --attn eager --batches 16
    python bench/decode_graph.py --tiny                           # a 2-layer model on the CPU: checks the script

Writes $OUT/decode_graph.json ($OUT defaults to ./bench_out).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from eval_speed import SEED, SHAPES, TINY_SHAPES, decode_bytes, measure_ceilings  # noqa: E402


def build(shape: dict[str, Any], device: str, dtype: Any) -> Any:
    """Random weights made on the device in the model dtype (LlamaConfig of the named shape)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = None  # fixed generation lengths
    return model.eval()


def prompts(batch: int, length: int, vocab: int, device: str) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator(device="cpu").manual_seed(SEED + batch)
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(batch):
        pad = (row * 7) % 64
        ids[row, :pad], mask[row, :pad] = 0, 0
    return ids.to(device), mask.to(device)


_COMPILED: dict[int, Any] = {}


def compiled(model: Any) -> Any:
    """One torch.compile of the model's forward per model, dynamic shapes: `kobench run --decode compiled`."""
    import torch

    if id(model) not in _COMPILED:
        _COMPILED[id(model)] = torch.compile(model.forward, dynamic=True)
    return _COMPILED[id(model)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str) -> float | None:
    if device.startswith("cuda"):
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return None


def run_generate(model: Any, ids: Any, mask: Any, new: int, device: str) -> dict[str, Any]:
    """model.generate, greedy, exactly `new` tokens; the first new token's logits mark the end of the prefill."""
    import torch
    from transformers import LogitsProcessorList

    marks: list[float] = []

    def clock(input_ids: Any, scores: Any) -> Any:
        if not marks:
            sync(device)
            marks.append(time.perf_counter())
        return scores

    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0, logits_processor=LogitsProcessorList([clock]))
    tokens = out[:, ids.shape[1]:].cpu()
    end = time.perf_counter()
    return {"tokens": tokens, "prefill_s": marks[0] - start, "decode_s": end - marks[0], "capture_s": 0.0,
            "peak_allocated_mb": peak_mb(device)}


def run_static(model: Any, ids: Any, mask: Any, new: int, device: str, capture: bool,
               step_forward: Any = None) -> dict[str, Any]:
    from transformers import StoppingCriteriaList

    from harness.staticdecode import BucketDecode

    reset_peak(device)
    decoder = BucketDecode(model, ids, mask, ids.shape[1] + new, StoppingCriteriaList(), pad_token_id=0,
                           capture=capture, step_forward=step_forward)
    out = decoder.run()
    if capture and not decoder.captured:
        raise SystemExit(f"CUDA graph capture failed: {decoder.capture_error}")
    return {"tokens": out[:, ids.shape[1]:], "prefill_s": decoder.prefill_s, "decode_s": decoder.decode_s,
            "capture_s": decoder.capture_s, "peak_allocated_mb": peak_mb(device)}


def measure(model: Any, shape: dict[str, Any], batch: int, args: argparse.Namespace, device: str,
            bandwidth: float, cost: dict[str, int]) -> dict[str, Any]:
    ids, mask = prompts(batch, args.prompt, shape["vocab_size"], device)
    steps = args.new - 1
    modes = {"generate": lambda: run_generate(model, ids, mask, args.new, device),
             "static": lambda: run_static(model, ids, mask, args.new, device, capture=False)}
    if device.startswith("cuda"):
        modes["graph"] = lambda: run_static(model, ids, mask, args.new, device, capture=True)
        if args.compile:  # Inductor fuses the step's small kernels (norms, RoPE, SiLU x up); then the graph
            modes["graph_compiled"] = lambda: run_static(model, ids, mask, args.new, device, capture=True,
                                                         step_forward=compiled(model))
    results: dict[str, Any] = {}
    for name, call in modes.items():
        began = time.perf_counter()
        call()  # warm-up (cuBLAS heuristics, allocator; the compile, for graph_compiled)
        warmup_s = time.perf_counter() - began
        runs = [call() for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["decode_s"])
        results[name] = {"ms_per_step": 1000 * best["decode_s"] / steps,
                         "ms_per_step_runs": [round(1000 * r["decode_s"] / steps, 3) for r in runs],
                         "prefill_ms": 1000 * best["prefill_s"], "capture_ms": 1000 * best["capture_s"],
                         "peak_allocated_mb": best["peak_allocated_mb"], "tokens": best["tokens"],
                         "first_call_s": warmup_s}
    floor = (cost["weights_read_bytes"] + batch * (args.prompt + args.new / 2) * cost["kv_bytes_per_token"]) / bandwidth
    static_floor = (cost["weights_read_bytes"] + batch * (args.prompt + args.new) * cost["kv_bytes_per_token"]) \
        / bandwidth
    tokens = {name: result.pop("tokens") for name, result in results.items()}
    row: dict[str, Any] = {"batch": batch, "prompt": args.prompt, "new": args.new, "floor_ms": 1000 * floor,
                           "static_floor_ms": 1000 * static_floor}
    for name, result in results.items():
        result["x_floor"] = result["ms_per_step"] / (1000 * floor)
        same = tokens[name] == tokens["generate"]
        result["rows_equal_to_generate"] = int(same.all(dim=1).sum())
        result["tokens_equal_to_generate"] = int(same.sum())
        if name.startswith("graph"):  # graph: the same kernels as the eager static loop, so bit for bit
            result["rows_equal_to_static"] = int((tokens[name] == tokens["static"]).all(dim=1).sum())
        row[name] = result
    row["speedup_graph_vs_generate"] = (row["generate"]["ms_per_step"] / row["graph"]["ms_per_step"]
                                        if "graph" in row else None)
    return row


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="exaone-3.5-7.8b,llama-3.2-3b")
    parser.add_argument("--attn", default="sdpa", help="comma-separated attention implementations: sdpa, eager")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--prompt", type=int, default=512, help="padded prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="new tokens per row (fixed)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also a graph of the torch.compile'd step")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU in fp32")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="bfloat16", help="bfloat16, or float32 to check the tokens without "
                        "bf16 rounding")
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.float32 if args.tiny else getattr(torch, args.dtype)
    shapes = TINY_SHAPES if args.tiny else {name: SHAPES[name] for name in args.models.split(",")}
    if args.tiny:
        args.prompt, args.new, args.batches = min(args.prompt, 96), min(args.new, 12), "1,4"
    out_dir = Path(os.environ.get("OUT") or "bench_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    ceilings = measure_ceilings(device)
    bandwidth = ceilings["copy_bandwidth_bytes_per_s"]
    report: dict[str, Any] = {"dtype": str(dtype), "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                              "torch": torch.__version__, "ceilings": ceilings, "models": []}
    for name, shape in shapes.items():
        began = time.perf_counter()
        model = build(shape, device, dtype)
        cost = decode_bytes(shape, dtype.itemsize)
        entry: dict[str, Any] = {"model": name, "build_s": time.perf_counter() - began, "floor_inputs": cost,
                                 "runs": []}
        for attention in args.attn.split(","):
            model.set_attn_implementation(attention)
            for batch in (int(b) for b in args.batches.split(",")):
                row = {"attention": attention, **measure(model, shape, batch, args, device, bandwidth, cost)}
                entry["runs"].append(row)
                shown = " | ".join(f"{mode} {row[mode]['ms_per_step']:.2f} ({row[mode]['x_floor']:.2f}x, "
                                   f"rows = generate {row[mode]['rows_equal_to_generate']}/{batch})"
                                   for mode in ("generate", "static", "graph", "graph_compiled") if mode in row)
                print(f"{name} {attention} batch {batch}: floor {row['floor_ms']:.2f} ms/step | {shown}", flush=True)
                write(out_dir, report, entry)  # after every row: a time limit keeps what finished
        report["models"].append(entry)
        _COMPILED.clear()  # the compiled forward holds the model
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    write(out_dir, report, None)


def write(out_dir: Path, report: dict[str, Any], current: dict[str, Any] | None) -> None:
    done = {**report, "models": report["models"] + ([current] if current else [])}
    (out_dir / "decode_graph.json").write_text(json.dumps(done, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
