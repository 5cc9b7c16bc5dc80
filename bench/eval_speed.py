"""How fast does kobench evaluate on one GPU, against stock lm-eval in the same run, and are the outputs the same?

For randomly initialised models built from hand-written configs (EXAONE-3.5-7.8B as a LlamaConfig, Llama-3.2-3B),
saved with a byte-level BPE tokenizer trained here on the task data (vocabulary padded to the config's with filler
tokens that decode to " w<id>"), the script runs the kobench tasks twice on the same GPU, each side in a process of
its own (its own CUDA context and allocator, so its peak memory is its own):

    stock    lm_eval.simple_evaluate(model="hf", model_args="pretrained=DIR,dtype=bfloat16", batch_size="auto",
             tasks=..., task_manager=TaskManager(include_path=tasks))
    kobench  harness.runner.run: KobenchLM with harness/fastgen.py for generation, under --hardware (rtx4090-24gb:
             the 24 GB memory cap `kobench run --hardware` applies)

Both sides read a copy of tasks/ whose generation tasks all have max_gen_toks = --max-gen-toks, evaluate the same
items (kobench's stratified --items subset) with the same seeds, and generate greedily. Random models rarely emit a
stop sequence; when one fires, it fires on both sides (the report counts stock's early stops).

Reported per model: wall time of generation and of log-likelihood scoring, generated tokens/s, batch sizes (stock's
probe included), decode time per step against the bandwidth floor ((weights read + KV cache read per step) /
device-to-device copy bandwidth measured here), peak memory (torch allocated and reserved, NVML) against the
profile's budget, and the outputs item by item: greedy texts, and for multiple choice the log-likelihoods and the
chosen answer. Where texts differ, a control reruns --control-items items of each generation task through kobench's
path at stock's own batch size, so in stock's batch composition: equal there means the differences come from
rounding of batched bf16 kernels, not from kobench's code. Writes $OUT/eval_speed.json and $OUT/eval_speed.log
($OUT defaults to ./bench_out).

    python bench/eval_speed.py             # GPU: both models, 16 items a task, 40 new tokens; ~7-8 min on an H100
    python bench/eval_speed.py --tiny      # a 2-layer config on the CPU, 2 items a task: checks the script runs
    python bench/eval_speed.py --models llama-3.2-3b    # one model per call, to fit a shorter command limit

Needs torch, transformers, tokenizers, lm-eval and kobench's own dependencies (harness, and the tasks' metrics:
python-mecab-ko, kiwipiepy, sacrebleu, rouge-score, markdown-it-py, sqlalchemy).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SEED = 1234
GIB = 2**30
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]

SHAPES: dict[str, dict[str, Any]] = {
    # EXAONE-3.5-7.8B-Instruct's shape (its own code is a Llama with renamed modules)
    "exaone-3.5-7.8b": dict(vocab_size=102400, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                            max_position_embeddings=32768, rope_theta=1_000_000.0, tie_word_embeddings=False),
    # Llama-3.2-3B's shape (its llama3 RoPE scaling changes no cost and is left out)
    "llama-3.2-3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                         rope_theta=500_000.0, tie_word_embeddings=True),
}
TINY_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, tie_word_embeddings=False),
}


# ---------------------------------------------------------------------------------------------------------------
# Preparation (the parent process: no CUDA here, so each side's process has the card to itself)
# ---------------------------------------------------------------------------------------------------------------

def task_texts(tasks_dir: Path) -> list[str]:
    """Every line of every data file of the tasks: the tokenizer's training text."""
    lines: list[str] = []
    for path in sorted(tasks_dir.glob("*/data/*")):
        if path.suffix in (".jsonl", ".csv", ".json", ".txt", ".md"):
            lines.extend(line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip())
    return lines


def train_tokenizer(texts: list[str], size: int) -> str:
    """A byte-level BPE of at most `size` entries trained on `texts`, as tokenizers' JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


def save_padded_tokenizer(trained: str, vocab_size: int, directory: Path) -> None:
    """The trained tokenizer with its vocabulary padded to the model's `vocab_size` by tokens no merge produces,
    each decoding to " w<id>": a random model picks them most of the time, so its outputs are readable, differ from
    item to item, and rarely contain a stop sequence."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(trained)
    vocab: dict[str, int] = data["model"]["vocab"]
    if len(vocab) > vocab_size:
        raise SystemExit(f"the trained tokenizer has {len(vocab)} entries, more than the model's {vocab_size}")
    next_id = max(vocab.values()) + 1
    while next_id < vocab_size:
        vocab[f"\u0120w{next_id}"] = next_id  # U+0120 is the byte-level spelling of a space
        next_id += 1
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    if len(tokenizer) != vocab_size:
        raise SystemExit(f"the padded tokenizer has {len(tokenizer)} entries, the model {vocab_size}")
    tokenizer.save_pretrained(directory)


def prepare_tasks(source: Path, target: Path, max_gen_toks: int, names: list[str]) -> None:
    """A copy of the task folders with every generation task's max_gen_toks set to one number."""
    from harness.tasks import get_task

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    for name in names:
        info = get_task(name)
        if info.output_type != "generate_until":
            continue
        edited = 0
        for path in sorted((target / info.folder.name).glob("*.yaml")):
            text, count = re.subn(r"^(\s*max_gen_toks:\s*)\d+", rf"\g<1>{max_gen_toks}",
                                  path.read_text(encoding="utf-8"), flags=re.M)
            path.write_text(text, encoding="utf-8")
            edited += count
        if not edited:
            raise SystemExit(f"{name}: no `max_gen_toks: N` line in its YAML files to set; add one to the task")


def plan_items(names: list[str], items: int) -> dict[str, list[int] | None]:
    """The items kobench's runner evaluates with --limit `items` (a stratified subset), for stock to use too."""
    from harness.config import RunConfig
    from harness.runner import plan_tasks

    config = RunConfig(model="unused", tasks=names, limit=items)
    return {plan.info.name: plan.indices for plan in plan_tasks(config)}


# ---------------------------------------------------------------------------------------------------------------
# Each side, in its own process
# ---------------------------------------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure_ceilings(device: str) -> dict[str, float]:
    """Device-to-device copy bandwidth (bytes read + written) and bf16 matrix-product rate, medians of timed runs
    on random data."""
    import torch

    on_gpu = device.startswith("cuda")
    elements = (GIB if on_gpu else 32 * 2**20) // 2
    source = torch.randn(elements, dtype=torch.bfloat16, device=device)
    target = torch.empty_like(source)
    size = 8192 if on_gpu else 512
    a = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    b = torch.randn(size, size, dtype=torch.bfloat16, device=device)

    def timed(work: Any, repeats: int) -> float:
        times = []
        for i in range(repeats + 3):
            if on_gpu:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                work()
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1000
            else:
                began = time.perf_counter()
                work()
                seconds = time.perf_counter() - began
            if i >= 3:  # warm-up first
                times.append(seconds)
        return statistics.median(times)

    copy_s = timed(lambda: target.copy_(source), 20)
    matmul_s = timed(lambda: torch.mm(a, b), 10)
    if not torch.equal(target, source):
        raise SystemExit("device copy check failed")
    return {"copy_bytes": 2 * source.numel() * 2, "copy_s": copy_s,
            "copy_bandwidth_bytes_per_s": 2 * source.numel() * 2 / copy_s,
            "matmul_size": size, "matmul_flops_per_s": 2 * size**3 / matmul_s}


def side_build(plan: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Random weights made on the device in the model dtype, saved with the tokenizer; the ceilings measured."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    device = plan["device"]
    if not model.get("build", True):  # an existing model (--pretrained): only the ceilings
        return {"ceilings": measure_ceilings(device)}
    tokenizer = AutoTokenizer.from_pretrained(plan["tokenizer_dir"])
    config = LlamaConfig(**model["shape"], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(SEED)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[plan["dtype"]]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    began = time.perf_counter()
    try:
        with torch.device(device):
            llm = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    llm.generation_config.do_sample = False
    built = time.perf_counter()
    llm.save_pretrained(model["dir"])
    tokenizer.save_pretrained(model["dir"])
    if plan.get("attn"):  # both sides load from this folder: the attention kernel travels in its config
        config_path = Path(model["dir"]) / "config.json"
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        config_path.write_text(json.dumps({**saved, "attn_implementation": plan["attn"]}, indent=1), encoding="utf-8")
    out = {"n_params": sum(p.numel() for p in llm.parameters()), "build_s": built - began,
           "save_s": time.perf_counter() - built}
    del llm
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        out["gpu"] = torch.cuda.get_device_name()
        out["gpu_total_bytes"] = torch.cuda.get_device_properties(0).total_memory
    out["ceilings"] = measure_ceilings(device)
    return out


class Recorder:
    """Wraps lm-eval's and kobench's entry points to record, per side: every generate call (batch, lengths, time),
    the outputs and log-likelihoods by (task, doc), stock's batch-size probes, kobench's generation buckets."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.generate_calls: list[dict[str, Any]] = []
        self.probes: list[dict[str, Any]] = []
        self.outputs: dict[str, str] = {}
        self.loglikelihoods: dict[str, dict[int, float]] = {}
        self.seconds = {"generate_until": 0.0, "loglikelihood": 0.0}
        self.buckets: list[dict[str, Any]] = []
        self.requests: dict[str, list[Any]] = {}
        self.lm: Any = None
        self.fast_generate: Any = None  # the unwrapped harness.fastgen.generate_until

    @staticmethod
    def key(request: Any) -> str:
        return f"{request.task_name}#{request.doc_id}"

    def install(self) -> Recorder:
        from lm_eval.models.huggingface import HFLM

        from harness import fastgen

        rec = self
        model_generate, generate_until = HFLM._model_generate, HFLM.generate_until
        loglikelihood, detect = HFLM.loglikelihood, HFLM._detect_batch_size
        self.fast_generate = fastgen.generate_until

        def timed_model_generate(lm: Any, *args: Any, **kwargs: Any) -> Any:
            context = kwargs["context"] if "context" in kwargs else args[0]
            sync(rec.device)
            began = time.perf_counter()
            out = model_generate(lm, *args, **kwargs)
            sync(rec.device)
            rec.generate_calls.append({"batch": int(context.shape[0]), "prompt_tokens": int(context.shape[1]),
                                       "new_tokens": int(out.shape[1] - context.shape[1]),
                                       "max_new_tokens": int(kwargs.get("max_length", 0)) - int(context.shape[1]),
                                       "s": time.perf_counter() - began})
            return out

        def stock_generate_until(lm: Any, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            began = time.perf_counter()
            out = generate_until(lm, requests, disable_tqdm=disable_tqdm)
            rec.seconds["generate_until"] += time.perf_counter() - began
            rec.outputs.update({rec.key(r): text for r, text in zip(requests, out)})
            return out

        def kobench_generate_until(lm: Any, requests: list[Any], disable_tqdm: bool = False,
                                   free_bytes: Any = None) -> Any:
            rec.lm = lm
            began = time.perf_counter()
            out, stats = rec.fast_generate(lm, requests, disable_tqdm=disable_tqdm, free_bytes=free_bytes)
            rec.seconds["generate_until"] += time.perf_counter() - began
            rec.outputs.update({rec.key(r): text for r, text in zip(requests, out)})
            task = requests[0].task_name if requests else ""
            rec.requests.setdefault(task, []).extend(requests)
            rec.buckets.extend({"task": task, **s.to_dict()} for s in stats)
            # buckets decoded by kobench's static-cache loop never call _model_generate: record them as its calls
            rec.generate_calls.extend({"batch": s.batch, "prompt_tokens": s.prompt_tokens, "new_tokens": s.new_tokens,
                                       "max_new_tokens": None, "decode": s.decode,
                                       "s": s.prefill_s + s.capture_s + s.decode_s}
                                      for s in stats if s.decode != "generate")
            return out, stats

        def timed_loglikelihood(lm: Any, requests: list[Any], disable_tqdm: bool = False) -> Any:
            began = time.perf_counter()
            out = loglikelihood(lm, requests, disable_tqdm=disable_tqdm)
            rec.seconds["loglikelihood"] += time.perf_counter() - began
            for request, (value, _greedy) in zip(requests, out):
                rec.loglikelihoods.setdefault(rec.key(request), {})[request.idx] = float(value)
            return out

        def timed_detect(lm: Any, requests: Any = None, pos: int = 0) -> int:
            began = time.perf_counter()
            size = detect(lm, requests, pos)
            rec.probes.append({"for": "loglikelihood" if requests else "generate_until", "batch": int(size),
                               "s": time.perf_counter() - began})
            return size

        HFLM._model_generate = timed_model_generate
        HFLM.generate_until = stock_generate_until  # KobenchLM overrides it: only stock comes through here
        HFLM.loglikelihood = timed_loglikelihood  # KobenchLM calls it through super()
        HFLM._detect_batch_size = timed_detect
        fastgen.generate_until = kobench_generate_until  # KobenchLM looks it up at call time
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "generate_calls": self.generate_calls, "probes": self.probes,
                "buckets": self.buckets, "outputs": self.outputs,
                "loglikelihoods": {k: [v[i] for i in sorted(v)] for k, v in self.loglikelihoods.items()}}


def side_stock(plan: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from harness.runner import MemorySampler

    device = plan["device"]
    rec = Recorder(device).install()
    task_manager = TaskManager(include_path=plan["tasks_dir"])
    chat = model_has_chat_template(model["dir"])  # kobench applies a model's chat template by default; so here
    with MemorySampler(device) as memory:
        began = time.perf_counter()
        results = simple_evaluate(
            model="hf", model_args=f"pretrained={model['dir']},dtype={plan['dtype']}",
            batch_size=plan["stock_batch_size"], device=device, tasks=plan["tasks"], task_manager=task_manager,
            samples=plan["items"], log_samples=True, apply_chat_template=chat,
            bootstrap_iters=plan["bootstrap_iters"], random_seed=SEED, numpy_random_seed=SEED,
            torch_random_seed=SEED, fewshot_random_seed=SEED, verbosity="ERROR")
        wall = time.perf_counter() - began
    scores = {task: {k: v for k, v in values.items() if "," in k and "_stderr" not in k and isinstance(v, float)}
              for task, values in results["results"].items()}
    return {**rec.to_dict(), "wall_s": wall, "scores": scores, "chat_template": chat, **_memory_figures(memory)}


def model_has_chat_template(directory: str) -> bool:
    from transformers import AutoTokenizer

    return bool(getattr(AutoTokenizer.from_pretrained(directory), "chat_template", None))


def side_kobench(plan: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    from harness import hardware
    from harness.config import RunConfig
    from harness.runner import MemorySampler, run

    device = plan["device"]
    if plan["hardware"] != "unspecified" and device.startswith("cuda"):
        hardware.prepare_cuda_allocator()  # `kobench run --hardware` sets it before CUDA starts; so does this
    rec = Recorder(device).install()
    config = RunConfig(model=model["dir"], tasks=plan["tasks"], limit=plan["items_per_task"],
                       db=str(Path(plan["work"]) / f"{model['name']}.db"), device=device, hardware=plan["hardware"],
                       bootstrap_iters=plan["bootstrap_iters"], seed=SEED, decode=plan.get("decode") or "auto",
                       # without a profile the weights load as stock loads them (a profile's planner picks its own)
                       dtype=plan["dtype"] if plan["hardware"] == "unspecified" else "auto")
    with MemorySampler(device) as memory:  # the runner resets torch's peak per task: only NVML's peak is ours
        began = time.perf_counter()
        result = run(config)
        wall = time.perf_counter() - began
    # a copy: the control below goes through the same recorded entry points, and its calls are not the run's
    out = {**json.loads(json.dumps(rec.to_dict())), "wall_s": wall, "eval_wall_s": result.wall_s,
           "status": result.status,
           "error": result.error, "scores": result.scores, "peak_allocated_mb": result.peak_mem_mb,
           "nvml_peak_used_mb": _memory_figures(memory).get("nvml_peak_used_mb"),
           "peak_rss_mb": _memory_figures(memory).get("peak_rss_mb"),
           "budget_bytes": (result.budget or {}).get("budget_bytes"),
           "budget_batch_sizes": (result.budget or {}).get("batch_sizes")}
    try:
        out["control"] = control_at_stock_batch(rec, plan, model)
    except Exception as exc:  # noqa: BLE001 - the measured run above is worth keeping whatever the control does
        out["control"] = {"error": f"{type(exc).__name__}: {exc}"}
    if device.startswith("cuda") and rec.buckets:
        try:
            out["kernel_time"] = kernel_time_per_step(rec.lm, max(rec.buckets, key=lambda b: b["batch"]), device)
        except Exception as exc:  # noqa: BLE001 - a diagnostic
            out["kernel_time"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def side_profile(plan: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """The suite through the runner once more, under --also-hardware (e.g. t4-16gb): each task's status, the
    planner's estimate and the measured peak, read back from the run's store (what `kobench show` prints)."""
    import sqlite3

    from harness import hardware
    from harness.config import RunConfig
    from harness.errors import KobenchError
    from harness.runner import MemorySampler, run

    profile, device = plan["also_hardware"], plan["device"]
    hardware.prepare_cuda_allocator()
    db = Path(plan["work"]) / f"{model['name']}.{profile}.db"
    config = RunConfig(model=model["dir"], tasks=plan["tasks"], limit=plan["items_per_task"], db=str(db),
                       device=device, hardware=profile, quantize=plan.get("also_quantize") or "none",
                       bootstrap_iters=plan["bootstrap_iters"], seed=SEED)
    with MemorySampler(device) as memory:
        try:
            result = run(config)
        except KobenchError as exc:  # e.g. fits only quantized and bitsandbytes is missing: refused before loading
            return {"profile": profile, "status": "refused", "error": str(exc)}
    with sqlite3.connect(db) as con:
        tasks = [{"task": t, "status": s, "peak_allocated_mb": p, "gen_tokens_per_s": g,
                  "estimate": (json.loads(d or "{}").get("estimate")), "precision": json.loads(d or "{}")
                  .get("precision")} for t, s, p, g, d in con.execute(
                      "SELECT task, status, peak_mem_mb, gen_tokens_per_s, details FROM task_results ORDER BY id")]
    return {"profile": profile, "status": result.status, "error": result.error, "budget": result.budget,
            "tasks": tasks, "peak_allocated_mb": result.peak_mem_mb,
            "nvml_peak_used_mb": _memory_figures(memory).get("nvml_peak_used_mb")}


def kernel_time_per_step(lm: Any, bucket: dict[str, Any], device: str) -> dict[str, Any]:
    """Where eager decoding's time goes, at the largest bucket's shape: GPU kernel time per decode step (the
    profiler's sum of kernel times) beside wall time per step. Kernel time is what a CUDA-graph decode could
    approach; wall minus kernel time is launch and Python overhead. Two generate calls of 4 and 20 new tokens on
    random prompt tokens; their difference is 16 decode steps without the prefill."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    generator = torch.Generator(device="cpu").manual_seed(SEED)
    ids = torch.randint(0, lm.model.config.vocab_size, (bucket["batch"], bucket["prompt_tokens"]),
                        generator=generator).to(device)
    mask = torch.ones_like(ids)

    def generate(new: int) -> None:
        lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)

    generate(4)  # warm-up
    wall, kernel = {}, {}
    for new in (4, 20):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            sync(device)
            began = time.perf_counter()
            generate(new)
            sync(device)
            wall[new] = time.perf_counter() - began
        # GPU-side events only (kernels, copies): a CPU op's device time would count its kernels a second time
        kernel[new] = sum(e.device_time_total for e in prof.events() if e.device_type == DeviceType.CUDA) / 1e6
    steps = 16
    return {"batch": bucket["batch"], "prompt_tokens": bucket["prompt_tokens"],
            "wall_ms_per_step": 1000 * (wall[20] - wall[4]) / steps,
            "kernel_ms_per_step": 1000 * (kernel[20] - kernel[4]) / steps,
            "note": "wall under the profiler; kernel = summed GPU kernel time"}


def control_at_stock_batch(rec: Recorder, plan: dict[str, Any], model: dict[str, Any]) -> dict[str, Any] | None:
    """Kobench's path on the first --control-items requests of each generation task (lm-eval's order) at stock's
    generation batch size: the same batches stock ran, so the texts must equal stock's if kobench's code is right."""
    from harness import fastgen

    stock_path = Path(plan["work"]) / f"{model['name']}.stock.json"
    if rec.lm is None or not stock_path.exists() or plan["control_items"] < 1:
        return None
    stock = json.loads(stock_path.read_text(encoding="utf-8"))
    batch = stock_generation_batch(stock)
    if batch is None:
        return None
    lm = rec.lm
    lm.batch_size_per_gpu = batch
    count = max(batch, plan["control_items"] - plan["control_items"] % batch)
    compared = equal = 0
    differing: list[str] = []
    began = time.perf_counter()
    for task, requests in rec.requests.items():
        contexts = [r.args[0] for r in requests]
        order = fastgen.length_order([len(lm.tok_encode(c)) for c in contexts], contexts)
        subset = [requests[i] for i in order[:count]]
        texts, _ = rec.fast_generate(lm, subset, disable_tqdm=True, free_bytes=lambda: None)
        for request, text in zip(subset, texts):
            expected = stock["outputs"].get(Recorder.key(request))
            if expected is None:
                continue
            compared += 1
            equal += text == expected
            if text != expected:
                differing.append(Recorder.key(request))
    return {"batch": batch, "items_per_task": count, "compared": compared, "equal": equal, "differing": differing,
            "s": time.perf_counter() - began}


def stock_generation_batch(stock: dict[str, Any]) -> int | None:
    """The batch size stock lm-eval generated with: its generate_until probe's answer, else its largest call."""
    probes = [p["batch"] for p in stock.get("probes", []) if p["for"] == "generate_until"]
    if probes:
        return probes[0]
    calls = [c["batch"] for c in stock.get("generate_calls", [])]
    return max(calls) if calls else None


def _memory_figures(memory: Any) -> dict[str, Any]:
    if memory.device.startswith("cuda"):
        return {"peak_allocated_mb": round(memory.peak_mb, 1), "peak_reserved_mb": memory.peak_reserved_mb,
                "nvml_peak_used_mb": memory.nvml_peak_mb}
    return {"peak_rss_mb": round(memory.peak_mb, 1)}


# ---------------------------------------------------------------------------------------------------------------
# Comparing and the floor arithmetic
# ---------------------------------------------------------------------------------------------------------------

def decode_bytes(shape: dict[str, Any], dtype_bytes: int) -> dict[str, int]:
    """Bytes one decode step must read: every weight but the embedding table (only the batch's rows of it; a tied
    lm_head reads the whole table once), and per cached token the keys and values of every layer."""
    from harness.hardware import ModelDims

    dims = ModelDims.from_config(shape)
    params = dims.param_counts()
    read = params.linear + params.other + dims.vocab_size * dims.hidden_size
    return {"weights_read_bytes": read * dtype_bytes, "kv_bytes_per_token": dims.kv_cache_bytes(1, 1, dtype_bytes),
            "n_params": params.total}


def decode_floor(buckets: list[dict[str, Any]], cost: dict[str, int], bandwidth: float) -> dict[str, Any]:
    """Measured decode time against the floor, bucket by bucket: a step with `batch` rows and P + t cached tokens
    reads weights + batch x (P + t) x kv bytes; over the steps t = 1 .. new-1 the mean cache is P + new/2."""
    steps = measured = floor = 0.0
    rows = []
    for b in buckets:
        n = max(b["new_tokens"] - 1, 0)
        if not n:
            continue
        step_bytes = cost["weights_read_bytes"] + b["batch"] * (b["prompt_tokens"] + b["new_tokens"] / 2) * \
            cost["kv_bytes_per_token"]
        step_floor = step_bytes / bandwidth
        steps += n
        measured += b["decode_s"]
        floor += n * step_floor
        rows.append({"task": b.get("task"), "batch": b["batch"], "prompt_tokens": b["prompt_tokens"],
                     "ms_per_step": 1000 * b["decode_s"] / n, "floor_ms": 1000 * step_floor,
                     "x_floor": b["decode_s"] / n / step_floor})
    return {"steps": int(steps), "ms_per_step": 1000 * measured / steps if steps else None,
            "floor_ms_per_step": 1000 * floor / steps if steps else None,
            "x_floor": measured / floor if floor else None, "buckets": rows}


def stock_step_floor(calls: list[dict[str, Any]], cost: dict[str, int], bandwidth: float) -> dict[str, Any]:
    """Stock's generate calls, prefill included (it cannot be split off there): seconds per new token per call."""
    steps = sum(c["new_tokens"] for c in calls)
    seconds = sum(c["s"] for c in calls)
    floor = sum(c["new_tokens"] * (cost["weights_read_bytes"] + c["batch"] * (c["prompt_tokens"] + c["new_tokens"] / 2)
                                   * cost["kv_bytes_per_token"]) / bandwidth for c in calls)
    return {"steps": steps, "ms_per_step": 1000 * seconds / steps if steps else None,
            "floor_ms_per_step": 1000 * floor / steps if steps else None, "x_floor": seconds / floor if floor else None}


def compare_outputs(stock: dict[str, Any], kobench: dict[str, Any]) -> dict[str, Any]:
    """Generation: identical texts per (task, doc). Multiple choice: same chosen answer, largest |log-lik diff|."""
    common = sorted(set(stock["outputs"]) & set(kobench["outputs"]))
    differing = [k for k in common if stock["outputs"][k] != kobench["outputs"][k]]
    by_task: dict[str, list[int]] = {}
    for k in common:
        by_task.setdefault(k.split("#")[0], [0, 0])
        by_task[k.split("#")[0]][0] += 1
        by_task[k.split("#")[0]][1] += k not in differing
    docs = sorted(set(stock["loglikelihoods"]) & set(kobench["loglikelihoods"]))
    same_choice, max_diff = 0, 0.0
    for k in docs:
        a, b = stock["loglikelihoods"][k], kobench["loglikelihoods"][k]
        same_choice += a.index(max(a)) == b.index(max(b))
        max_diff = max(max_diff, max(abs(x - y) for x, y in zip(a, b)))
    return {
        "generation": {"items": len(common), "identical": len(common) - len(differing),
                       "match_rate": (len(common) - len(differing)) / len(common) if common else None,
                       "by_task": {t: {"items": n, "identical": same} for t, (n, same) in by_task.items()},
                       "examples": [{"item": k, "stock": stock["outputs"][k][:120],
                                     "kobench": kobench["outputs"][k][:120]} for k in differing[:3]]},
        "multiple_choice": {"docs": len(docs), "same_choice": same_choice, "max_abs_loglik_diff": max_diff},
    }


def generated_tokens(calls: list[dict[str, Any]]) -> int:
    """Rows x new tokens over every generate call: the decoding work done, padding rows of finished items included."""
    return sum(c["batch"] * c["new_tokens"] for c in calls)


def summarize_model(name: str, build: dict[str, Any], stock: dict[str, Any], kobench: dict[str, Any],
                    shape: dict[str, Any], dtype_bytes: int) -> dict[str, Any]:
    cost = decode_bytes(shape, dtype_bytes)
    bandwidth = build["ceilings"]["copy_bandwidth_bytes_per_s"]
    early_stops = sum(1 for c in stock["generate_calls"] if c["new_tokens"] < c["max_new_tokens"])
    sides = {}
    for side, data in (("stock", stock), ("kobench", kobench)):
        tokens = generated_tokens(data["generate_calls"])
        gen_s, ll_s = data["seconds"]["generate_until"], data["seconds"]["loglikelihood"]
        sides[side] = {"generate_s": gen_s, "loglikelihood_s": ll_s, "generated_tokens": tokens,
                       "generated_tokens_per_s": tokens / gen_s if gen_s else None,
                       "generate_batches": sorted({c["batch"] for c in data["generate_calls"]}, reverse=True),
                       "peak_allocated_mb": data.get("peak_allocated_mb"),
                       "nvml_peak_used_mb": data.get("nvml_peak_used_mb"), "peak_rss_mb": data.get("peak_rss_mb"),
                       "wall_s": data["wall_s"]}
    sides["stock"]["probes"] = stock["probes"]
    sides["stock"]["per_step"] = stock_step_floor(stock["generate_calls"], cost, bandwidth)
    sides["kobench"]["decode"] = decode_floor(kobench["buckets"], cost, bandwidth)
    sides["kobench"]["prefill_s"] = sum(b["prefill_s"] for b in kobench["buckets"])
    sides["kobench"]["budget_bytes"] = kobench.get("budget_bytes")
    sides["kobench"]["budget_batch_sizes"] = kobench.get("budget_batch_sizes")
    sides["kobench"]["status"] = kobench.get("status")
    kernel = kobench.get("kernel_time") or {}
    if "kernel_ms_per_step" in kernel:
        bucket = {"batch": kernel["batch"], "prompt_tokens": kernel["prompt_tokens"], "new_tokens": 2 * 12}
        step_floor = decode_floor([{**bucket, "decode_s": 0.0}], cost, bandwidth)["floor_ms_per_step"]
        kernel["floor_ms_per_step"] = step_floor  # at the cache length of the profiled steps (P + 4 .. P + 20)
        kernel["kernel_x_floor"] = kernel["kernel_ms_per_step"] / step_floor if step_floor else None
        kernel["wall_x_floor"] = kernel["wall_ms_per_step"] / step_floor if step_floor else None
    sides["kobench"]["kernel_time"] = kernel or None
    budget = kobench.get("budget_bytes")
    nvml = kobench.get("nvml_peak_used_mb")
    return {
        "model": name, "n_params": cost["n_params"], "floor_inputs": {**cost, "copy_bandwidth_bytes_per_s": bandwidth},
        "stock": sides["stock"], "kobench": sides["kobench"],
        "speedup": {"generate": _ratio(sides["stock"]["generate_s"], sides["kobench"]["generate_s"]),
                    "loglikelihood": _ratio(sides["stock"]["loglikelihood_s"], sides["kobench"]["loglikelihood_s"])},
        "within_budget": (nvml * 2**20 <= budget) if budget and nvml else None,
        "stock_early_stops": early_stops,
        "outputs": compare_outputs(stock, kobench), "control": kobench.get("control"),
        "scores": {"stock": stock.get("scores"), "kobench": kobench.get("scores")},
    }


def _ratio(a: float, b: float) -> float | None:
    return a / b if a and b else None


# ---------------------------------------------------------------------------------------------------------------
# The parent: prepare, run each side in a process, compare, report
# ---------------------------------------------------------------------------------------------------------------

def run_side(side: str, plan_path: Path, model_name: str, log: Path) -> dict[str, Any]:
    work = Path(json.loads(plan_path.read_text(encoding="utf-8"))["work"])
    result_path = work / f"{model_name}.{side}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--plan", str(plan_path),
               "--model-name", model_name]
    began = time.perf_counter()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n===== {model_name}: {side} =====\n")
        handle.flush()
        proc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy())
    print(f"  {side:8s} {time.perf_counter() - began:7.1f} s  (exit {proc.returncode})", flush=True)
    if result_path.exists():  # kept beside the log: a run cut short by a time limit keeps its finished sides
        shutil.copy(result_path, log.parent / result_path.name)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        print(tail, flush=True)
        raise SideFailed(f"{model_name} {side} failed (exit {proc.returncode}): {tail[-600:]}")
    return json.loads(result_path.read_text(encoding="utf-8"))


class SideFailed(Exception):
    """One side of one model failed; the report keeps the error and the script goes on to the next model."""


def print_table(report: dict[str, Any]) -> None:
    print("\nmodel             side     gen s   tok/s  batches        ms/step  floor  x    loglik s  peak MiB "
          "(NVML; CPU: RSS)")
    for m in report["models"]:
        for side in ("stock", "kobench"):
            s = m[side]
            step = s["per_step"] if side == "stock" else s["decode"]
            batches = ",".join(str(b) for b in s["generate_batches"][:4])
            print(f"{m['model']:17s} {side:8s} {s['generate_s']:6.1f} {s['generated_tokens_per_s'] or 0:7.1f}  "
                  f"{batches:13s} {step['ms_per_step'] or 0:7.2f} {step['floor_ms_per_step'] or 0:6.2f} "
                  f"{step['x_floor'] or 0:4.1f} {s['loglikelihood_s']:8.1f}  "
                  f"{s['nvml_peak_used_mb'] or s['peak_rss_mb'] or 0:9.0f}")
        g, c = m["outputs"]["generation"], m["outputs"]["multiple_choice"]
        control = m.get("control") or {}
        print(f"  speed-up: generation {m['speedup']['generate'] or 0:.2f}x, log-likelihood "
              f"{m['speedup']['loglikelihood'] or 0:.2f}x; texts identical {g['identical']}/{g['items']}; "
              f"choices same {c['same_choice']}/{c['docs']} (max |dLL| {c['max_abs_loglik_diff']:.3g}); control at "
              f"stock's batch {control.get('equal', '-')}/{control.get('compared', '-')}; within budget: "
              f"{m['within_budget']}; stock early stops {m['stock_early_stops']}")
        also = m.get("also_hardware")
        if also:
            peaks = ", ".join(f"{t['task']} {t['status']} {t['peak_allocated_mb'] or 0:.0f}/"
                              f"{(t['estimate'] or {}).get('total_bytes', 0) / 2**20:.0f}"
                              for t in also.get("tasks", []))
            print(f"  under {also['profile']}: {also['status']} (NVML peak {also.get('nvml_peak_used_mb') or 0:.0f} "
                  f"MiB){'; ' + peaks + ' (peak/estimate MiB)' if peaks else ''}"
                  f"{'; ' + (also.get('error') or '')[:160] if also.get('error') else ''}")
        kernel = m["kobench"].get("kernel_time") or {}
        if "kernel_ms_per_step" in kernel:
            print(f"  eager decode at batch {kernel['batch']} x {kernel['prompt_tokens']} tokens: wall "
                  f"{kernel['wall_ms_per_step']:.2f} ms/step, GPU kernels {kernel['kernel_ms_per_step']:.2f} ms/step, "
                  f"floor {kernel['floor_ms_per_step']:.2f} ms/step")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer config on the CPU (or GPU), 2 items a task")
    parser.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--pretrained", default=None,
                        help="an existing model instead of random ones: a kobench model name or a directory")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: every task)")
    parser.add_argument("--items", type=int, default=None, help="items per task (default 16; 2 with --tiny)")
    parser.add_argument("--max-gen-toks", type=int, default=None,
                        help="new tokens per item (default 40; 8 --tiny; 0 keeps each task's own)")
    parser.add_argument("--hardware", default=None,
                        help="kobench's profile (default rtx4090-24gb on a GPU; 'unspecified' for none)")
    parser.add_argument("--also-hardware", default=None,
                        help="then run kobench alone once more under this profile (e.g. t4-16gb): statuses, "
                             "estimates and peaks per task")
    parser.add_argument("--decode", default="auto", help="kobench's --decode: auto (CUDA graphs on a GPU), graph, "
                        "compiled or generate")
    parser.add_argument("--attn", default=None,
                        help="attention kernel of both sides (eager is bit-reproducible; default: transformers' own)")
    parser.add_argument("--also-quantize", default=None, help="--quantize for that run (auto, int8, nf4)")
    parser.add_argument("--stock-batch-size", default="auto",
                        help="stock lm-eval's batch_size (default auto; on a CPU pass 1, lm-eval's own default: "
                             "its auto probe runs full-context forwards)")
    parser.add_argument("--control-items", type=int, default=2, help="items per generation task in the control")
    parser.add_argument("--bootstrap-iters", type=int, default=1000, help="both sides (kobench's default)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                        help="model weights (default bfloat16 on a GPU, float32 on a CPU); float32 with --hardware "
                        "unspecified checks the texts without bf16 rounding")
    parser.add_argument("--side", choices=["build", "stock", "kobench", "profile"], help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--model-name", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.side:  # a child process: one side of one model
        plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))
        model = next(m for m in plan["models"] if m["name"] == args.model_name)
        work = {"build": side_build, "stock": side_stock, "kobench": side_kobench,
                "profile": side_profile}[args.side]
        result = work(plan, model)
        out = Path(plan["work"]) / f"{model['name']}.{args.side}.json"
        out.write_text(json.dumps(result, ensure_ascii=False, default=str), encoding="utf-8")
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shapes = TINY_SHAPES if args.tiny else SHAPES
    names = args.models.split(",") if args.models else list(shapes)
    unknown = [n for n in names if n not in shapes]
    if unknown and not args.pretrained:
        parser.error(f"--models {','.join(unknown)}: unknown; known: {', '.join(shapes)}")
    items = args.items or (2 if args.tiny else 16)
    max_gen_toks = args.max_gen_toks if args.max_gen_toks is not None else (8 if args.tiny else 40)
    hardware = args.hardware or ("rtx4090-24gb" if device.startswith("cuda") and not args.tiny else "unspecified")
    out_dir = Path(os.environ.get("OUT", "bench_out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "eval_speed.log"
    log.write_text("", encoding="utf-8")

    from harness.paths import tasks_dir
    from harness.tasks import discover_tasks

    source_tasks = tasks_dir()
    task_names = args.tasks.split(",") if args.tasks else sorted(discover_tasks())
    work = Path(tempfile.mkdtemp(prefix="kobench-eval-speed-"))
    began = time.perf_counter()
    try:
        if max_gen_toks:
            prepare_tasks(source_tasks, work / "tasks", max_gen_toks, task_names)
        else:
            shutil.copytree(source_tasks, work / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
        os.environ["KOBENCH_TASKS_DIR"] = str(work / "tasks")  # the runner and the planner read the copy
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if args.pretrained:
            models = [existing_model(args.pretrained)]
        else:
            models = [{"name": n, "shape": shapes[n], "dir": str(work / n), "build": True} for n in names]
        plan = {"work": str(work), "device": device,
                "dtype": args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"),
                "tasks": task_names, "items_per_task": items, "items": plan_items(task_names, items),
                "tasks_dir": str(work / "tasks"), "tokenizer_dir": str(work / "tokenizer"), "hardware": hardware,
                "stock_batch_size": args.stock_batch_size, "bootstrap_iters": args.bootstrap_iters,
                "control_items": args.control_items, "also_hardware": args.also_hardware,
                "also_quantize": args.also_quantize, "attn": args.attn, "decode": args.decode, "models": models}
        plan_path = work / "plan.json"
        plan_path.write_text(json.dumps(plan, ensure_ascii=False), encoding="utf-8")
        report: dict[str, Any] = {"device": device, "hardware_profile": hardware, "items_per_task": items,
                                  "attn": args.attn or "default", "decode": args.decode,
                                  "max_gen_toks": max_gen_toks or "each task's own", "tasks": task_names,
                                  "stock_batch_size": args.stock_batch_size, "models": [], "failed": [],
                                  "versions": _versions(), "command": " ".join(sys.argv)}
        if not args.pretrained:
            began_tok = time.perf_counter()
            trained = train_tokenizer(task_texts(source_tasks), 1024 if args.tiny else 16000)
            report["tokenizer"] = {"trained_entries": len(json.loads(trained)["model"]["vocab"]),
                                   "train_s": time.perf_counter() - began_tok}
        for model in models:
            print(f"{model['name']}:", flush=True)
            try:
                if model.get("build"):
                    save_padded_tokenizer(trained, model["shape"]["vocab_size"], work / "tokenizer")
                build = run_side("build", plan_path, model["name"], log)
                stock = run_side("stock", plan_path, model["name"], log)
                kobench = run_side("kobench", plan_path, model["name"], log)
                also = None
                if args.also_hardware:
                    try:
                        also = run_side("profile", plan_path, model["name"], log)
                    except SideFailed as exc:  # the comparison above stands on its own
                        also = {"profile": args.also_hardware, "status": "side failed", "error": str(exc)[-600:]}
            except SideFailed as exc:
                report["failed"].append(str(exc))
                continue
            finally:
                if model.get("build"):
                    shutil.rmtree(model["dir"], ignore_errors=True)  # the weights: up to 16 GB of disk
            summary = summarize_model(model["name"], build, stock, kobench, model["shape"],
                                      2 if plan["dtype"] == "bfloat16" else 4)
            summary["build"] = build
            if also:
                summary["also_hardware"] = also
            report["models"].append(summary)
            report["wall_s"] = time.perf_counter() - began
            (out_dir / "eval_speed.json").write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str),
                                                     encoding="utf-8")
        report["wall_s"] = time.perf_counter() - began
        (out_dir / "eval_speed.json").write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str),
                                                 encoding="utf-8")
        print_table(report)
        for failure in report["failed"]:
            print(f"FAILED: {failure}")
        print(f"\nwrote {out_dir / 'eval_speed.json'} in {time.perf_counter() - began:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if report["failed"] else 0


def existing_model(name: str) -> dict[str, Any]:
    """--pretrained: a kobench model name (an embedded model is converted once, as `kobench run` does) or a
    directory; its config.json gives the shape for the floor arithmetic."""
    from harness.models import EMBEDDED_MODELS, convert_embedded, resolve_model

    spec = resolve_model(name)
    if spec.details.get("embedded") and not spec.load_path:
        spec.load_path = str(convert_embedded(EMBEDDED_MODELS[spec.name]))
    shape = json.loads((Path(spec.load_path) / "config.json").read_text(encoding="utf-8"))
    return {"name": Path(name).name, "shape": shape, "dir": spec.load_path, "build": False}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "transformers", "lm-eval", "tokenizers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "missing"
    return out


if __name__ == "__main__":
    sys.exit(main())
