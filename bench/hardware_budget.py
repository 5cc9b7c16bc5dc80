"""Does harness.hardware's memory estimate match what a GPU really uses under a hardware profile?

For randomly initialised models built from hand-written configs (EXAONE-3.5-7.8B as a LlamaConfig, Llama-3.2-3B),
for each profile (rtx4090-24gb, t4-16gb) and precision (the profile's full precision, bf16 or fp16; int8 and nf4
when bitsandbytes is installed), this script asks harness.hardware whether the model fits and at which batch size, caps
the process at the profile's memory exactly as `kobench run --hardware` does, and runs two workloads at that batch:

    generate  prefill of --prompt-tokens + greedy decode of --gen-tokens (lm-eval's generate_until)
    score     one forward over prompt + gen tokens with full logits and log_softmax (lm-eval's loglikelihood)

It records peak allocated, peak reserved and NVML-reported device memory against the estimate (target: within
15 %), prefill and decode tokens/s, and the CUDA context size that harness.hardware.CUDA_CONTEXT_BYTES stands for.
Writes $OUT/hardware_budget.json ($OUT defaults to ./bench_out). Needs torch + transformers (+ bitsandbytes for
int8 and nf4), not lm-eval.

    python bench/hardware_budget.py             # on a GPU larger than the profiles (an A100/H100/H200)
    python bench/hardware_budget.py --tiny      # a 2-layer config on CPU in seconds: checks the script runs
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from harness import hardware  # noqa: E402

MIB = 2**20


def exaone_35_7_8b() -> LlamaConfig:
    """EXAONE-3.5-7.8B-Instruct's shape (its own code is a Llama with renamed modules)."""
    return LlamaConfig(vocab_size=102400, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                       rope_theta=1_000_000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def llama_32_3b() -> LlamaConfig:
    """Llama-3.2-3B's shape (its llama3 RoPE scaling changes no memory and is left out)."""
    return LlamaConfig(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                       num_attention_heads=24, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                       rope_theta=500_000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


def tiny(tie: bool) -> LlamaConfig:
    return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                       tie_word_embeddings=tie)


MODELS = {"exaone-3.5-7.8b": exaone_35_7_8b, "llama-3.2-3b": llama_32_3b}
TINY_MODELS = {"tiny-untied": lambda: tiny(False), "tiny-tied": lambda: tiny(True)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ---------------------------------------------------------------------------------------------------------------
# Building random models
# ---------------------------------------------------------------------------------------------------------------

def build_full(config: LlamaConfig, dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    """Random weights created directly on the device in the target dtype (no fp32 copy: the cap would refuse it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def build_quantized(config: LlamaConfig, precision: str, compute_dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    """The model on the meta device, then each projection quantized (nf4 with double quant, or LLM.int8, as
    harness.models loads them) from a random 16-bit weight one at a time, and the rest (embeddings, norms, lm_head)
    materialised in 16-bit: the peak is the quantized model plus one projection, as when transformers loads a
    checkpoint with bitsandbytes."""
    import bitsandbytes as bnb
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    previous = torch.get_default_dtype()
    torch.set_default_dtype(compute_dtype)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child is not model.lm_head:
                weight = torch.empty(child.out_features, child.in_features, dtype=compute_dtype, device=device)
                weight.normal_(0, 0.02)
                if precision == "nf4":
                    layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                              compute_dtype=compute_dtype, compress_statistics=True,
                                              quant_type="nf4", device="meta")
                    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4",
                                                     compress_statistics=True).to(device)
                else:
                    layer = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=False,
                                                has_fp16_weights=False, threshold=6.0, device="meta")
                    # Int8Params quantizes only on a move from the CPU, so the weight makes that trip
                    layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False,
                                                     has_fp16_weights=False).to(device)
                del weight
                setattr(parent, name, layer)
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                value = torch.empty(param.shape, dtype=compute_dtype, device=device)
                value = value.fill_(1.0) if param.dim() == 1 else value.normal_(0, 0.02)  # norms start at 1
                setattr(module, name, torch.nn.Parameter(value, requires_grad=False))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    with torch.device(device):
        model.model.rotary_emb = LlamaRotaryEmbedding(config)  # its inv_freq buffer was made on meta
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------

class NvmlPeak:
    """The card's used memory (NVML, all processes, CUDA context included), sampled every 10 ms in a thread."""

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._read = lambda: pynvml.nvmlDeviceGetMemoryInfo(self._handle).used
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def used(self) -> int:
        return int(self._read())

    def __enter__(self) -> NvmlPeak:
        self.peak = self.used()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, self.used())
                self._stop.wait(0.01)

        self._stop.clear()
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak = max(self.peak, self.used())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_cuda_context(device: str, nvml: NvmlPeak | None, before_init: int | None) -> dict[str, Any]:
    """NVML used after CUDA init and a first cuBLAS matmul and SDPA call, less what torch holds: the context."""
    a = torch.randn(1024, 1024, device=device, dtype=torch.bfloat16)
    _ = a @ a
    q = torch.randn(1, 8, 128, 64, device=device, dtype=torch.bfloat16)
    _ = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    sync(device)
    reserved = torch.cuda.memory_reserved()
    after = nvml.used() if nvml else None
    del a, q, _
    torch.cuda.empty_cache()
    context = (after - before_init - reserved) if after is not None and before_init is not None else None
    return {"nvml_before_init_bytes": before_init, "nvml_after_warmup_bytes": after,
            "harness_device_memory_used_bytes": hardware.device_memory_used(device),  # what the runner samples
            "torch_reserved_bytes": reserved, "cuda_context_bytes": context,
            "estimator_cuda_context_bytes": hardware.CUDA_CONTEXT_BYTES}


@dataclass
class Scenario:
    model: str
    profile: str
    precision: str
    workload: str
    batch_size: int = 0
    prompt_tokens: int = 0
    gen_tokens: int = 0
    fits: bool = False
    quantize_auto_picks: str | None = None
    estimate: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def run_workload(model: Any, workload: str, batch: int, prompt: int, gen: int, vocab: int, device: str,
                 nvml: NvmlPeak | None) -> dict[str, Any]:
    """One workload at one batch size: peak memory and throughput."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(3, vocab, (batch, prompt + (gen if workload == "score" else 0)), generator=generator)
    ids = ids.to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    out: dict[str, Any] = {}
    with torch.no_grad(), (nvml if nvml else _null()) as sampler:
        if workload == "generate":
            kwargs = {"attention_mask": torch.ones_like(ids), "do_sample": False, "pad_token_id": 0,
                      "eos_token_id": None}
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)  # prefill (+ one token)
            sync(device)
            prefill_s = time.perf_counter() - start
            start = time.perf_counter()
            generated = model.generate(ids, max_new_tokens=gen, min_new_tokens=gen, **kwargs)
            sync(device)
            total_s = time.perf_counter() - start
            new_tokens = generated.shape[1] - ids.shape[1]
            decode_s = max(total_s - prefill_s, 1e-9)
            out.update(prefill_tokens_per_s=batch * prompt / prefill_s, generated_tokens=int(new_tokens) * batch,
                       decode_tokens_per_s=batch * max(new_tokens - 1, 0) / decode_s, wall_s=prefill_s + total_s)
        else:
            start = time.perf_counter()
            # as lm-eval's loglikelihood: log_softmax over the whole [batch, seq, vocab] logits
            logprobs = torch.nn.functional.log_softmax(model(ids).logits, dim=-1)
            picked = torch.gather(logprobs[:, :-1], 2, ids[:, 1:].unsqueeze(-1)).sum().item()
            sync(device)
            wall = time.perf_counter() - start
            del logprobs
            out.update(prompt_tokens_per_s=batch * ids.shape[1] / wall, wall_s=wall, logprob_sum=picked)
    if device.startswith("cuda"):
        out.update(peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                   peak_reserved_bytes=torch.cuda.max_memory_reserved())
    if nvml:
        out["nvml_peak_used_bytes"] = sampler.peak
    return out


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def compare(estimate: hardware.MemoryEstimate, measured: dict[str, Any], nvml_baseline: int | None,
            budget_bytes: int) -> dict[str, Any]:
    """Relative errors, estimate / measured - 1: positive = the estimate is on the safe side. Torch-side figures
    (allocated, reserved) are compared with weights + KV cache + activations, NVML with the whole estimate.
    Reserved and NVML include cached blocks that nothing forced the allocator to release: under the cap it frees
    them before it fails, so allocated (+ the CUDA context) is what has to fit."""
    out: dict[str, Any] = {}
    torch_side = estimate.weights_bytes + estimate.kv_cache_bytes + estimate.activation_bytes
    if measured.get("peak_reserved_bytes"):
        out["vs_peak_reserved"] = round(torch_side / measured["peak_reserved_bytes"] - 1, 4)
    if measured.get("peak_allocated_bytes"):
        out["vs_peak_allocated"] = round(torch_side / measured["peak_allocated_bytes"] - 1, 4)
        out["allocated_within_15pct"] = abs(out["vs_peak_allocated"]) <= 0.15
    if measured.get("nvml_peak_used_bytes") and nvml_baseline is not None:
        this_process = measured["nvml_peak_used_bytes"] - nvml_baseline  # less other processes on the card
        out["nvml_process_peak_bytes"] = this_process
        out["vs_nvml"] = round(estimate.total_bytes / this_process - 1, 4)
        out["within_15pct"] = abs(out["vs_nvml"]) <= 0.15
        out["measured_within_budget"] = this_process <= budget_bytes
    return out


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer configs, short sequences, CPU unless a GPU")
    parser.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--profiles", default="rtx4090-24gb,t4-16gb")
    parser.add_argument("--precisions", default="full,int8,nf4",
                        help="full (the profile's bf16/fp16), int8 and/or nf4 (these two need bitsandbytes)")
    parser.add_argument("--workloads", default="generate,score")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="default 1024 (16 with --tiny)")
    parser.add_argument("--gen-tokens", type=int, default=None, help="default 128 (8 with --tiny)")
    parser.add_argument("--max-batch", type=int, default=None, help="largest batch tried (default 64; 4 --tiny)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--allocator", default=hardware.CUDA_ALLOC_CONF,
                        help="PYTORCH_CUDA_ALLOC_CONF, as kobench sets it under a profile ('' for torch's default)")
    args = parser.parse_args(argv)
    if args.allocator:  # before CUDA's first use, which reads it
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = args.allocator

    models = TINY_MODELS if args.tiny else MODELS
    chosen = args.models.split(",") if args.models else list(models)
    prompt = args.prompt_tokens or (16 if args.tiny else 1024)
    gen = args.gen_tokens or (8 if args.tiny else 128)
    max_batch = args.max_batch or (4 if args.tiny else hardware.MAX_AUTO_BATCH["gpu"])
    device = args.device
    on_gpu = device.startswith("cuda")
    out_dir = Path(os.environ.get("OUT") or "bench_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    have_bnb = importlib.util.find_spec("bitsandbytes") is not None

    nvml = None
    before_init = None
    if on_gpu:
        try:
            nvml = NvmlPeak(torch.cuda.current_device() if torch.cuda.is_initialized() else 0)
            before_init = nvml.used()
        except Exception as exc:  # no NVML: allocator figures only
            print(f"NVML unavailable ({exc}); recording torch allocator figures only", file=sys.stderr)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if on_gpu else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "bitsandbytes": __import__("bitsandbytes").__version__ if have_bnb else None},
        "settings": {"tiny": args.tiny, "prompt_tokens": prompt, "gen_tokens": gen, "max_batch": max_batch,
                     "allocator": args.allocator},
        "estimator": {"cuda_context_bytes": hardware.CUDA_CONTEXT_BYTES, "quantized_bytes": hardware.QUANTIZED_BYTES},
        "scenarios": []}
    if on_gpu:
        report["cuda_context"] = measure_cuda_context(device, nvml, before_init)
    nvml_baseline = before_init  # used memory of everything that is not this process

    profiles = hardware.load_profiles()
    for model_name in chosen:
        config = models[model_name]()
        dims = hardware.ModelDims.from_config(config)
        params = dims.param_counts()
        for profile_name in args.profiles.split(","):
            profile = profiles[profile_name]
            auto = hardware.plan_budget(profile, dims, params, [hardware.TaskShape("generate", prompt, gen, False,
                                                                                   max_batch)], quantize="auto")
            for precision_arg in args.precisions.split(","):
                quantize = "none" if precision_arg == "full" else precision_arg
                precision = profile.full_precision if quantize == "none" else quantize
                if quantize != "none" and not have_bnb:
                    report["scenarios"].append(Scenario(model_name, profile_name, precision, "-",
                                                        error="bitsandbytes not installed").__dict__)
                    continue
                report["scenarios"] += run_precision(config, dims, params, profile, quantize, args.workloads,
                                                     prompt, gen, max_batch, device, nvml, nvml_baseline,
                                                     model_name, auto.precision if auto.fits else None)
                (out_dir / "hardware_budget.json").write_text(json.dumps(report, indent=1))
    (out_dir / "hardware_budget.json").write_text(json.dumps(report, indent=1))
    _print_summary(report)
    print(f"wrote {out_dir / 'hardware_budget.json'}")
    return 0


def run_precision(config: LlamaConfig, dims: hardware.ModelDims, params: hardware.ParamCounts,
                  profile: hardware.HardwareProfile, quantize: str, workloads: str, prompt: int, gen: int,
                  max_batch: int, device: str, nvml: NvmlPeak | None, nvml_baseline: int | None, model_name: str,
                  auto_pick: str | None) -> list[dict[str, Any]]:
    """Build the model once at this precision under the profile's cap, then run each workload at its batch."""
    shapes = {"generate": hardware.TaskShape("generate", prompt, gen, False, max_batch),
              "score": hardware.TaskShape("score", prompt + gen, 0, True, max_batch)}
    plans = {w: hardware.plan_budget(profile, dims, params, [shapes[w]], quantize=quantize)
             for w in workloads.split(",")}
    precision = next(iter(plans.values())).precision
    scenarios = {w: Scenario(model_name, profile.name, precision, w, prompt_tokens=prompt, gen_tokens=gen,
                             fits=p.fits, quantize_auto_picks=auto_pick,
                             estimate=(p.estimates.get(w) or p.worst).to_dict()) for w, p in plans.items()}
    for w, p in plans.items():
        scenarios[w].batch_size = p.batch_sizes.get(w, 0)
    if not any(p.fits for p in plans.values()):
        for s in scenarios.values():
            s.error = "estimate exceeds the budget: not run"
        return [s.__dict__ for s in scenarios.values()]
    cap = hardware.apply_memory_cap(profile, device) if device.startswith("cuda") else None
    model = None
    try:
        compute = profile.full_precision  # also bitsandbytes' compute dtype for int8 / nf4
        start = time.perf_counter()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        model = build_full(config, DTYPES[compute], device) if quantize == "none" else \
            build_quantized(config, quantize, DTYPES[compute], device)
        sync(device)
        weights = {"build_s": round(time.perf_counter() - start, 2)}
        if device.startswith("cuda"):
            weights["weights_allocated_bytes"] = torch.cuda.memory_allocated()
        for workload, plan in plans.items():
            scenario = scenarios[workload]
            scenario.measured = {**weights, "memory_cap": cap}
            if not plan.fits:
                scenario.error = "estimate exceeds the budget: not run"
                continue
            estimate = plan.estimates[workload]
            try:
                measured = run_workload(model, workload, estimate.batch_size, prompt, gen, dims.vocab_size, device,
                                        nvml)
                scenario.measured.update(measured)
                scenario.measured["comparison"] = compare(estimate, measured, nvml_baseline, profile.budget_bytes)
            except torch.cuda.OutOfMemoryError as exc:
                scenario.error = f"out of memory although estimated to fit: {str(exc).splitlines()[0][:160]}"
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    except torch.cuda.OutOfMemoryError as exc:
        for s in scenarios.values():
            s.error = s.error or f"out of memory building the model: {str(exc).splitlines()[0][:160]}"
    finally:
        del model
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(1.0)
    return [s.__dict__ for s in scenarios.values()]


def _print_summary(report: dict[str, Any]) -> None:
    gib = lambda b: f"{b / 2**30:6.2f}" if b else "     -"  # noqa: E731
    pct = lambda x: "" if x is None else f"{x:+.1%}"  # noqa: E731
    print(f"{'model':16} {'profile':13} {'prec':5} {'work':8} {'batch':>5} {'est GiB':>8} {'alloc':>6} "
          f"{'err':>7} {'nvml':>6} {'err':>7}  note")
    for s in report["scenarios"]:
        measured = s.get("measured") or {}
        comparison = measured.get("comparison") or {}
        print(f"{s['model']:16} {s['profile']:13} {s['precision']:5} {s['workload']:8} {s.get('batch_size', 0):>5} "
              f"{gib((s.get('estimate') or {}).get('total_bytes')):>8} {gib(measured.get('peak_allocated_bytes')):>6} "
              f"{pct(comparison.get('vs_peak_allocated')):>7} {gib(comparison.get('nvml_process_peak_bytes')):>6} "
              f"{pct(comparison.get('vs_nvml')):>7}  {s.get('error') or ''}")


if __name__ == "__main__":
    sys.exit(main())
