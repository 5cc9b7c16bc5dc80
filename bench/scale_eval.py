"""Data-parallel evaluation on N GPUs against one GPU: the same greedy outputs, and how much faster.

A randomly initialised model of EXAONE-3.5-7.8B's shape (a LlamaConfig: hidden 4096, 32 layers, 32 heads, 8 KV heads,
intermediate 14336, vocab 102400; bf16) greedily continues a fixed set of random-token prompts, first in one process
on one GPU, then in N processes launched by `accelerate launch` (one per GPU), each taking every N-th batch, as
`kobench run --num-gpus N` shards items. Every process builds the same weights from the same seed (checked by a
checksum), batches are split whole so each batch has the same shape on either side, and the outputs are gathered on
rank 0 and compared token by token with the single-GPU outputs. Timed: the generation loop only (not start-up or
weight init), from a barrier to the last rank's end.

Attention runs eager by default: its matmuls go through cuBLAS, pinned to deterministic algorithms here, so the
same batch gives the same tokens on any GPU of the kind. With --attn sdpa the fused attention kernels differ from run
to run in the last bit (on 2 x H200, torch 2.11 + CUDA 13.0, even the same batch twice on one GPU), which flips the
many near-tied greedy choices of a random model: the report's run_to_run_identical and first_token_logit_margin show
when that, not the sharding, is why outputs differ.

Writes $OUT/scale_eval.json ($OUT defaults to ./bench_out). Needs torch + transformers + accelerate, not lm-eval.

    python bench/scale_eval.py --gpus 2         # on 2 GPUs of ~40 GB or more (2 x H200: about 2 minutes)
    python bench/scale_eval.py --tiny           # a 2-layer model in 2 CPU processes (gloo): checks the script
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

EXAONE_7_8B_SHAPE = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 102400,
                     "max_position_embeddings": 32768, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-5}
TINY_SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128, "vocab_size": 512, "max_position_embeddings": 256}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=2, help="data-parallel processes (one per GPU)")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=512, help="tokens per prompt")
    parser.add_argument("--new-tokens", type=int, default=128, help="greedy tokens generated per prompt")
    parser.add_argument("--batch", type=int, default=16, help="prompts per generate() call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attn", default="eager", help="attention implementation: eager (deterministic: its "
                        "matmuls go through cuBLAS, pinned below) or sdpa (faster; its fused kernels may differ "
                        "from run to run in the last bit, which flips near-tied greedy choices)")
    parser.add_argument("--tiny", action="store_true", help="2-layer model, small workload, CPU processes")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one phase, write this JSON file
    args = parser.parse_args(argv)
    if args.tiny:
        args.prompts, args.prompt_len, args.new_tokens, args.batch = 16, 16, 8, 4
    return args


# ---------------------------------------------------------------------------------------------------------------
# One phase (1 process, or N processes under accelerate launch)
# ---------------------------------------------------------------------------------------------------------------

def build_model(args: argparse.Namespace, device: torch.device) -> Any:
    """Random weights from the seed, built on the device in the compute dtype (identical on every GPU)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**(TINY_SHAPE if args.tiny else EXAONE_7_8B_SHAPE), bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=args.attn)
    return model.eval()


def weight_checksum(model: Any) -> float:
    """Sum of every weight in float64: equal across processes only if the weights are."""
    with torch.no_grad():
        return float(sum(p.double().sum().item() for p in model.parameters()))


def prompt_batches(args: argparse.Namespace, vocab: int) -> list[torch.Tensor]:
    """Fixed random-token prompts of one length (no padding), in batches of --batch."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(3, vocab, (args.prompts, args.prompt_len), generator=generator)
    return list(ids.split(args.batch))


def run_phase(args: argparse.Namespace) -> None:
    from accelerate import PartialState
    from accelerate.utils import gather_object

    cpu = args.tiny
    if cpu:
        torch.set_num_threads(1)  # one thread in every process: the same reduction order on both sides
    else:
        # cuBLAS picks reduction schemes by workspace and heuristics; pin them so a batch computes bit-identically
        # wherever and whenever it runs (the comparison is about sharding, not about kernel choice)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    state = PartialState(cpu=cpu)
    device = state.device
    model = build_model(args, device)
    checksum = weight_checksum(model)
    batches = prompt_batches(args, model.config.vocab_size)
    mine = list(range(state.process_index, len(batches), state.num_processes))  # whole batches, round robin

    margins: list[float] = []  # first generated token: top-1 minus top-2 logit (small = a near-tie)

    def generate(ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(device)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0,
                                 output_logits=True, return_dict_in_generate=True)
        top2 = out.logits[0].float().topk(2, dim=-1).values
        margins.extend((top2[:, 0] - top2[:, 1]).tolist())
        return out.sequences[:, ids.shape[1]:].cpu()

    generate(batches[0][:1, :8])  # warm-up: kernels and allocator, outside the timing
    margins.clear()
    state.wait_for_everyone()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    outputs: dict[int, list[int]] = {}
    for b in mine:
        for row, tokens in enumerate(generate(batches[b]).tolist()):
            outputs[b * args.batch + row] = tokens
    if device.type == "cuda":
        torch.cuda.synchronize()
    own_s = time.perf_counter() - start
    state.wait_for_everyone()
    wall_s = time.perf_counter() - start
    # run-to-run check: the first batch of this rank again, after everything else ran on this device
    repeat_same = generate(batches[mine[0]]).tolist() == [outputs[mine[0] * args.batch + r]
                                                          for r in range(len(batches[mine[0]]))] if mine else None
    gathered = gather_object([{"rank": state.process_index, "outputs": outputs, "own_s": own_s,
                               "checksum": checksum, "repeat_same": repeat_same, "margins": margins,
                               "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20
                               if device.type == "cuda" else None}])
    if state.is_main_process:
        merged = {i: tokens for part in gathered for i, tokens in part["outputs"].items()}
        Path(args.worker).write_text(json.dumps({
            "processes": state.num_processes, "device": str(device), "wall_s": wall_s,
            "rank_s": [p["own_s"] for p in sorted(gathered, key=lambda p: p["rank"])],
            "checksums": [p["checksum"] for p in gathered], "peak_mem_mb": [p["peak_mem_mb"] for p in gathered],
            "repeat_same": [p["repeat_same"] for p in gathered],
            "margins": sorted(m for p in gathered for m in p["margins"]),
            "outputs": {str(i): merged[i] for i in sorted(merged)}}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------
# The comparison: one process, then N
# ---------------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _phase(args: argparse.Namespace, processes: int, result: Path, argv: list[str]) -> dict[str, Any]:
    env = dict(os.environ)
    me = [str(Path(__file__).resolve()), *argv, "--worker", str(result)]
    if processes == 1:
        command = [sys.executable, *me]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(_free_port()), *me]
        if args.tiny:
            env["ACCELERATE_USE_CPU"] = "true"  # torchrun's launcher, ranks joined over gloo
    if args.tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    data = json.loads(result.read_text())
    data["process_s"] = time.perf_counter() - start
    return data


def compare(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    if not args.tiny and torch.cuda.device_count() < args.gpus:
        sys.exit(f"--gpus {args.gpus}: only {torch.cuda.device_count()} CUDA device(s) visible (or pass --tiny)")
    with tempfile.TemporaryDirectory() as tmp:
        one = _phase(args, 1, Path(tmp) / "one.json", argv)
        many = _phase(args, args.gpus, Path(tmp) / "many.json", argv)
    same = [i for i in one["outputs"] if one["outputs"][i] == many["outputs"].get(i)]
    # where differing continuations part: late divergence = a near-tie flipped, not a sharding bug
    first_diff = sorted(next(k for k, (a, b) in enumerate(zip(one["outputs"][i], many["outputs"][i])) if a != b)
                        for i in one["outputs"] if i not in same)
    tokens = args.prompts * args.new_tokens
    report = {
        "model": "random LlamaConfig, 2 layers (--tiny)" if args.tiny else "random EXAONE-3.5-7.8B-shaped Llama, bf16",
        "workload": {"prompts": args.prompts, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                     "batch": args.batch, "greedy": True},
        "gpus": args.gpus, "device": many["device"].split(":")[0],
        "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.tiny else None,
        "same_weights": len({round(c, 3) for c in one["checksums"] + many["checksums"]}) == 1,
        "identical_outputs": len(same), "outputs": len(one["outputs"]),
        "first_differing_token": {"min": first_diff[0], "median": first_diff[len(first_diff) // 2]}
        if first_diff else None,
        "same_tokens": round(sum(a == b for i in one["outputs"] for a, b in zip(one["outputs"][i],
                                                                                many["outputs"][i]))
                             / (len(one["outputs"]) * args.new_tokens), 4),
        "run_to_run_identical": one["repeat_same"] + many["repeat_same"],
        "first_token_logit_margin": {"min": round(one["margins"][0], 5),
                                     "median": round(one["margins"][len(one["margins"]) // 2], 5)},
        "attn": args.attn,
        "wall_s": {"1": round(one["wall_s"], 3), str(args.gpus): round(many["wall_s"], 3)},
        "rank_s": {str(args.gpus): [round(s, 3) for s in many["rank_s"]]},
        "gen_tokens_per_s": {"1": round(tokens / one["wall_s"], 1), str(args.gpus): round(tokens / many["wall_s"], 1)},
        "speedup": round(one["wall_s"] / many["wall_s"], 2),
        "peak_mem_mb": {"1": one["peak_mem_mb"], str(args.gpus): many["peak_mem_mb"]},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": _version("transformers"), "accelerate": _version("accelerate")},
    }
    return report


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        run_phase(args)
        return 0
    report = compare(args, argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale_eval.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "versions"}, indent=1))
    ok = report["same_weights"] and report["identical_outputs"] == report["outputs"]
    print(f"{report['identical_outputs']}/{report['outputs']} greedy outputs identical on 1 and {args.gpus} "
          f"{'GPUs' if not args.tiny else 'CPU processes'}; speed-up {report['speedup']}x "
          f"-> {out / 'scale_eval.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
