"""Runs a suite on one model through lm-eval and writes every finished task to the results store at once.

Flow: validate config -> resolve model -> plan tasks (data hashes, item subsets, fingerprints) -> reuse finished
tasks from the store -> load the model only if something is left -> evaluate task by task -> finish the run.
Nothing is written to the store before the model has loaded, so a user mistake leaves the store untouched.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from harness import multigpu
from harness.config import RunConfig, load_suites
from harness.errors import KobenchError
from harness.models import ModelSpec, count_parameters, identity_key, load_model, resolve_model, select_device
from harness.paths import REPO_ROOT, tasks_dir
from harness.store import open_store
from harness.store import records
from harness.tasks import TaskInfo, data_hash, get_task

Progress = Callable[..., None]
CPU_DEFAULT_BATCH = 8


def offline_env(online: bool) -> None:
    """Record the hub mode for this process (harness/__init__ already defaulted to offline before any HF import)."""
    if online:
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "0"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class TaskPlan:
    info: TaskInfo
    data_paths: list[Path]
    data_hash: str
    indices: list[int] | None
    n_items: int
    fingerprint: str = ""
    # generation overrides of the suite (the quick suite caps max_gen_toks); part of the fingerprint
    gen_kwargs: dict[str, Any] | None = None


@dataclass
class RunResult:
    run_id: int | None
    model: str
    adapter: str | None
    hardware: str
    status: str
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    n: dict[str, int | None] = field(default_factory=dict)
    wall_s: float = 0.0
    peak_mem_mb: float | None = None
    reused: list[str] = field(default_factory=list)
    error: str | None = None
    budget: dict[str, Any] | None = None  # the BudgetPlan, when the run names a hardware profile

    def to_json(self) -> dict[str, Any]:
        out = {"run_id": self.run_id, "model": self.model, "adapter": self.adapter, "hardware": self.hardware,
               "status": self.status, "scores": self.scores, "n": self.n, "wall_s": round(self.wall_s, 3),
               "peak_mem_mb": self.peak_mem_mb}
        if self.error:
            out["error"] = self.error
        if self.budget:
            out["budget"] = self.budget
        return out


def stratified_indices(docs: list[dict[str, Any]], count: int, field_name: str | None,
                       prefer_short: bool = False) -> list[int]:
    """A fixed subset of `count` items spread round-robin over the values of `field_name`.

    Within each value, items are taken in file order, or shortest first with `prefer_short` (the quick suite: on a
    CPU the longest translation documents alone would take minutes).
    """
    if count >= len(docs):
        return list(range(len(docs)))
    groups: dict[Any, list[int]] = defaultdict(list)
    order = range(len(docs))
    if prefer_short:
        sizes = [len(json.dumps(doc, ensure_ascii=False, default=str)) for doc in docs]
        order = sorted(order, key=lambda i: (sizes[i], i))
    for i in order:
        groups[docs[i].get(field_name) if field_name else None].append(i)
    queues = [groups[key] for key in sorted(groups, key=str)]
    chosen: list[int] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return sorted(chosen)


def _task_code_hash(info: TaskInfo) -> str:
    digest = hashlib.sha256()
    for path in sorted(info.folder.glob("*.yaml")) + sorted(info.folder.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def plan_tasks(config: RunConfig) -> list[TaskPlan]:
    from harness.taskdata import read_records

    suite = load_suites().get(config.suite or "", {}) or {}
    suite_items = suite.get("items") or {}
    plans = []
    known_categories: set[str] = set()
    for name in config.tasks:
        info = get_task(name)
        eval_path = Path(config.data[name]) if name in config.data else info.split_path(info.eval_split)
        fewshot_split = info.raw.get("fewshot_split")
        paths = [eval_path] + ([info.split_path(fewshot_split)] if fewshot_split and info.split_path(fewshot_split) else [])
        docs = read_records(eval_path, info.data_format)
        if config.categories:
            known_categories |= {str(d["category"]) for d in docs if d.get("category") is not None}
            docs = [d for d in docs if d.get("category") in set(config.categories)]
        count = suite_items.get(name) or suite_items.get(info.output_type) or suite_items.get("default")
        if config.limit is not None:
            count = min(count or config.limit, config.limit)
        indices = stratified_indices(docs, count, info.breakdown[0] if info.breakdown else None,
                                     prefer_short=bool(suite.get("prefer_short"))) if count else None
        plans.append(TaskPlan(info=info, data_paths=paths, data_hash=data_hash(paths), indices=indices,
                              n_items=len(indices) if indices is not None else len(docs),
                              gen_kwargs=_suite_gen_kwargs(suite, info)))
    if config.categories:
        _check_categories(config, plans, known_categories)
    return plans


def _suite_gen_kwargs(suite: dict[str, Any], info: TaskInfo) -> dict[str, Any] | None:
    """The suite's cap on max_gen_toks for a generation task whose own limit is higher (None: the task's own)."""
    cap = suite.get("max_gen_toks")
    own = (info.raw.get("generation_kwargs") or {}).get("max_gen_toks")
    if info.output_type != "generate_until" or not cap or (own is not None and own <= cap):
        return None
    return {"max_gen_toks": int(cap)}


def _check_categories(config: RunConfig, plans: list[TaskPlan], known: set[str]) -> None:
    """A --categories name that no task of the run knows is a typo; a task left with no items cannot run."""
    unknown = [c for c in config.categories if c not in known]
    if unknown:
        raise KobenchError(f"--categories {','.join(unknown)}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                           f"for {', '.join(config.tasks)}. Known categories: {', '.join(sorted(known)) or 'none'}")
    for plan in plans:
        if not plan.n_items:
            raise KobenchError(f"--categories {','.join(config.categories)}: no {plan.info.name} items in those "
                               "categories; run it separately or drop it from --tasks")


def _fingerprint(plan: TaskPlan, model_identity: str, config: RunConfig, chat: bool) -> str:
    parts = {"model": model_identity, "task": plan.info.name, "version": plan.info.version,
             "code": _task_code_hash(plan.info), "data": plan.data_hash, "indices": plan.indices,
             "fewshot": config.num_fewshot, "chat": chat, "seed": config.seed, "categories": config.categories,
             "refined": config.refined, "generation": plan.info.raw.get("generation_kwargs")}
    if plan.gen_kwargs:
        parts["generation_override"] = plan.gen_kwargs
    if config.hardware != "unspecified":
        parts["hardware"] = config.hardware  # speed and memory are measured per profile, so results are too
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def environment_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("kobench", "lm-eval", "transformers", "torch", "peft", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        out["kobench_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                               text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        out["kobench_commit"] = "unknown"
    return out


class MemorySampler:
    """Peak memory during a block. GPU: torch's peak allocated (peak_mb) and reserved, plus the whole card's use as
    NVML reports it (sampled every 50 ms; it includes the CUDA context). CPU: this process's sampled RSS."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_mb = 0.0
        self.peak_reserved_mb: float | None = None
        self.nvml_peak_mb: float | None = None
        self._sampled_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        if self.device.startswith("cuda"):
            import torch

            from harness.hardware import cuda_index, device_memory_used

            torch.cuda.reset_peak_memory_stats(cuda_index(self.device))
            read: Callable[[], int | None] = lambda: device_memory_used(self.device)  # noqa: E731
        else:
            import psutil

            proc = psutil.Process()
            read = lambda: proc.memory_info().rss  # noqa: E731

        def sample() -> None:
            while not self._stop.is_set():
                used = read()
                if used is None:
                    return
                self._sampled_peak = max(self._sampled_peak, used)
                self._stop.wait(0.05)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        sampled = self._sampled_peak / 2**20 if self._sampled_peak else None
        if self.device.startswith("cuda"):
            import torch

            from harness.hardware import cuda_index

            index = cuda_index(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(index) / 2**20
            self.peak_reserved_mb = torch.cuda.max_memory_reserved(index) / 2**20
            self.nvml_peak_mb = sampled
        else:
            self.peak_mb = sampled or 0.0

    def figures(self) -> dict[str, float | None]:
        """The task_results.details entries (peak_mem_mb has its own column)."""
        if self.device.startswith("cuda"):
            return {"peak_reserved_mb": _round(self.peak_reserved_mb), "nvml_peak_used_mb": _round(self.nvml_peak_mb)}
        return {"peak_rss_mb": _round(self.peak_mb)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def make_lm(model: Any, tokenizer: Any, batch_size: str, device: str, decode: str = "auto", **hf_kwargs: Any) -> Any:
    """lm-eval's HF backend around an already-loaded model (or a path lm-eval loads itself, with `hf_kwargs` such
    as parallelize=True), counting tokens and time per request type; `decode` picks fastgen's decode path."""
    from lm_eval.models.huggingface import HFLM

    from harness import fastgen

    class KobenchLM(HFLM):
        def reset_counters(self) -> None:
            self.counters = {"prompt_tokens": 0, "gen_tokens": 0, "prompt_s": 0.0, "gen_s": 0.0}
            self.generation_buckets = []  # harness.fastgen.BucketStats of every generate call
            self.kobench_decode_notes = set()  # why buckets of this task went to model.generate

        def loglikelihood(self, requests, disable_tqdm: bool = False):  # noqa: ANN001, ANN201
            start = time.perf_counter()
            out = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
            self.counters["prompt_s"] += time.perf_counter() - start
            self.counters["prompt_tokens"] += sum(len(self.tok_encode(r.args[0] + r.args[1])) for r in requests)
            return out

        def generate_until(self, requests, disable_tqdm: bool = False):  # noqa: ANN001, ANN201
            start = time.perf_counter()
            # kobench's generation path: memory-sized length buckets, same outputs (harness/fastgen.py)
            out, buckets = fastgen.generate_until(self, requests, disable_tqdm=disable_tqdm)
            self.generation_buckets.extend(buckets)
            self.counters["gen_s"] += time.perf_counter() - start
            self.counters["prompt_tokens"] += sum(len(self.tok_encode(r.args[0])) for r in requests)
            self.counters["gen_tokens"] += sum(len(self.tok_encode(text)) for text in out)
            return out

    if batch_size == "auto" and not device.startswith("cuda"):
        batch_size = str(CPU_DEFAULT_BATCH)  # lm-eval's auto probe runs max-length forwards: minutes on a CPU
    lm = KobenchLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device, **hf_kwargs)
    lm.kobench_decode = decode
    lm.reset_counters()
    return lm


def _numeric(value: Any) -> float | None:
    """A metric value as a float; None when it is not a number or NaN (not computed: stored NULL, shown as n/a)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and not math.isnan(value):
        return float(value)
    return None


def _sample_rows(task: TaskInfo, logged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """lm-eval's logged samples (one per doc and filter) merged into one row per doc."""
    rows: dict[int, dict[str, Any]] = {}
    for sample in logged:
        filt = sample.get("filter", "none")
        metrics = {(m if filt == "none" else f"{m},{filt}"): _numeric(sample.get(m)) for m in sample.get("metrics", [])}
        metrics = {k: v for k, v in metrics.items() if v is not None}
        row = rows.get(sample["doc_id"])
        if row is None:
            doc = sample.get("doc") or {}
            args = sample.get("arguments") or [[""]]
            prompt = args[0][0] if args and args[0] else ""
            target = sample.get("target")
            extracted = None
            if task.output_type == "multiple_choice":
                lls = [resp[0] for resp in sample.get("filtered_resps", [])]
                output = str(max(range(len(lls)), key=lambda i: lls[i])) if lls else ""
                choices = doc.get("choices")
                if isinstance(target, str) and isinstance(choices, list) and target in choices:
                    target = choices.index(target)
            else:
                # the raw generation is what people read; the filtered answer (e.g. the extracted letter) goes beside it
                raw = (sample.get("resps") or [[""]])[0]
                output = raw[0] if isinstance(raw, list) and raw else raw
                filtered = (sample.get("filtered_resps") or [None])[0]
                if filtered is not None and filtered != output:
                    extracted = filtered
            row = {"doc_id": int(sample["doc_id"]), "item_id": str(doc.get("id") or doc.get("fname") or "") or None,
                   "prompt": str(prompt), "output": str(output),
                   "target": target if isinstance(target, str) else json.dumps(target, ensure_ascii=False),
                   "metrics": {}}
            if extracted is not None:
                row["metrics"]["_extracted"] = extracted
            for name in task.breakdown:
                if name in doc:
                    row["metrics"][f"_{name}"] = doc[name]
            rows[row["doc_id"]] = row
        row["metrics"].update(metrics)
    return [rows[k] for k in sorted(rows)]


def _score_rows(task: TaskInfo, task_results: dict[str, Any], n: int | None,
                samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    scores = []
    for key, value in task_results.items():
        # lm-eval mixes metrics ("acc,none") with bookkeeping ("alias", "name", "sample_len"): metrics have a filter.
        if "," not in key or "_stderr," in key:
            continue
        metric, _, filt = key.partition(",")
        stderr = task_results.get(f"{metric}_stderr,{filt}")
        name = metric if filt in ("", "none") else f"{metric},{filt}"
        scores.append({"metric": name, "value": _numeric(value), "stderr": _numeric(stderr), "n": n})
    # per-category (breakdown) means of every per-sample metric
    for field_name in task.breakdown:
        groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for row in samples:
            group = row["metrics"].get(f"_{field_name}")
            if group is None:
                continue
            for metric, value in row["metrics"].items():
                if not metric.startswith("_") and isinstance(value, (int, float)):
                    groups[str(group)][metric].append(float(value))
        for group, metrics in sorted(groups.items()):
            for metric, values in metrics.items():
                scores.append({"metric": f"{metric}[{field_name}={group}]", "value": sum(values) / len(values),
                               "stderr": None, "n": len(values)})
    return scores


def evaluate_task(lm: Any, plan: TaskPlan, config: RunConfig, chat: bool, task_manager: Any,
                  device: str) -> records.TaskOutcome | None:
    """One task through lm-eval; None in a data-parallel follower rank (rank 0 gets everyone's samples)."""
    from lm_eval import simple_evaluate

    lm.reset_counters()
    start = time.perf_counter()
    with MemorySampler(device) as memory:
        results = simple_evaluate(
            model=lm, tasks=[plan.info.name], task_manager=task_manager, num_fewshot=config.num_fewshot,
            samples={plan.info.name: plan.indices} if plan.indices is not None else None, log_samples=True,
            apply_chat_template=chat, fewshot_as_multiturn=chat and bool(config.num_fewshot),
            bootstrap_iters=config.bootstrap_iters, random_seed=config.seed, numpy_random_seed=config.seed,
            torch_random_seed=config.seed, fewshot_random_seed=config.seed, verbosity="ERROR",
            gen_kwargs=plan.gen_kwargs)
    wall = time.perf_counter() - start
    multigpu.gather_counters(lm)
    if results is None:
        return None
    name = plan.info.name
    n = (results.get("n-samples", {}).get(name) or {}).get("effective")
    samples = _sample_rows(plan.info, results["samples"][name])
    c = lm.counters
    return records.TaskOutcome(
        task=name, task_version=plan.info.version, data_hash=plan.data_hash, fingerprint=plan.fingerprint,
        n=n, scores=_score_rows(plan.info, results["results"][name], n, samples), samples=samples, wall_s=wall,
        peak_mem_mb=memory.peak_mb, prompt_tokens=c["prompt_tokens"], gen_tokens=c["gen_tokens"],
        prompt_tokens_per_s=c["prompt_tokens"] / c["prompt_s"] if c["prompt_s"] and not c["gen_s"] else (
            c["prompt_tokens"] / wall if wall else None),
        gen_tokens_per_s=c["gen_tokens"] / c["gen_s"] if c["gen_s"] else None,
        details={"chat_template": chat, "indices": plan.indices,
                 "generation_kwargs": {**(plan.info.raw.get("generation_kwargs") or {}), **(plan.gen_kwargs or {})},
                 "batch_size": getattr(lm, "batch_size_per_gpu", None), **memory.figures(),
                 **_truncation(lm, plan.info, results["samples"][name]), **_decoding(lm)})


def _decoding(lm: Any) -> dict[str, Any]:
    """How this task's generations were decoded (harness/fastgen.py), and why buckets went to model.generate."""
    buckets = getattr(lm, "generation_buckets", None)
    if not buckets:
        return {}
    notes = set(getattr(lm, "kobench_decode_notes", None) or ())
    if getattr(lm, "kobench_graph_failed", None):
        notes.add(lm.kobench_graph_failed)
    return {"decode": sorted({b.decode for b in buckets}), **({"decode_notes": sorted(notes)} if notes else {})}


def _truncation(lm: Any, task: TaskInfo, logged: list[dict[str, Any]]) -> dict[str, Any]:
    """{"truncated": ...} when some prompts do not fit the model's context. lm-eval then cuts them from the left (for
    every model alike) and the model answers what is left: recorded, not refused, because a context limit belongs to
    the model, not to the data."""
    limit = getattr(lm, "max_length", None)
    if not limit or not logged:
        return {}
    items: dict[int, str] = {}
    longest = 0
    for sample in logged:
        requests = sample.get("arguments") or []
        if task.output_type == "generate_until":
            context, kwargs = requests[0][0], requests[0][1] if len(requests[0]) > 1 else {}
            need = len(lm.tok_encode(context)) + int((kwargs or {}).get("max_gen_toks", lm.max_gen_toks))
        else:  # loglikelihood: context + continuation, the longest choice
            need = max((len(lm.tok_encode(r[0] + r[1])) for r in requests if len(r) > 1), default=0)
        longest = max(longest, need)
        if need > limit:
            doc = sample.get("doc") or {}
            items[int(sample["doc_id"])] = str(doc.get("id") or doc.get("fname") or sample["doc_id"])
    if not items:
        return {}
    return {"truncated": {"count": len(items), "items": [items[k] for k in sorted(items)][:20], "context": limit,
                          "longest_tokens": longest,
                          "note": "prompt + answer exceed the model's context: lm-eval kept the end of the prompt"}}


def _chat_enabled(config: RunConfig, tokenizer: Any) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if config.chat_template == "on" and not has_template:
        raise KobenchError(f"--chat-template on: model {config.model} has no chat template. Use auto or off")
    return has_template if config.chat_template == "auto" else config.chat_template == "on"


def run(config: RunConfig, progress: Progress | None = None,
        parallel: multigpu.ParallelConfig | None = None) -> RunResult:
    """Evaluate one model on the configured tasks; returns what `kobench run --json` prints.

    `parallel` (harness.multigpu.ParallelConfig): model parallel, vLLM, or (in a launched group) data parallel."""
    progress = progress or (lambda *a, **k: None)
    offline_env(config.online)
    config.validate()
    parallel = (parallel or multigpu.ParallelConfig()).validate(config)
    dp = multigpu.DataParallel.from_env(config, parallel)  # None unless launched as one of N processes
    if config.hardware != "unspecified":
        from harness.hardware import prepare_cuda_allocator

        prepare_cuda_allocator()
    spec = resolve_model(config.model, config.adapter, online=config.online, trust_remote_code=config.trust_remote_code)
    device = dp.device if dp else select_device(config.device)
    plans = plan_tasks(config)
    # The tokenizer decides whether the chat template applies, which is part of every task's fingerprint.
    tokenizer = _load_tokenizer(spec, progress)
    chat = _chat_enabled(config, tokenizer)
    # Under a hardware profile the budget picks the precision, before anything is loaded or stored.
    budget = _plan_budget(config, spec, device, plans, tokenizer, chat) if config.hardware != "unspecified" else None
    quantization = budget.quantization if budget else (config.quantize if config.quantize in ("int8", "nf4") else None)
    dtype_name = _dtype_name(budget.compute_dtype if budget else config.dtype, device)
    model_identity = identity_key(spec, dtype_name, quantization)
    for plan in plans:
        plan.fingerprint = multigpu.fingerprint(_fingerprint(plan, model_identity, config, chat), parallel, dp, config)
    cap = None
    if budget and budget.fits and budget.profile.kind == "gpu" and device.startswith("cuda"):
        from harness.hardware import apply_memory_cap

        cap = apply_memory_cap(budget.profile, device)

    if dp and not dp.is_writer:  # only rank 0 writes to the store
        return multigpu.follow(dp, config, spec, plans, chat, budget, quantization)
    store = open_store(config.db)
    try:
        return _run_with_store(config, spec, device, plans, chat, dtype_name, model_identity, store, progress,
                               budget, quantization, cap, parallel=parallel, dp=dp)
    except DBAPIError as exc:
        raise store.write_error(exc) from None
    finally:
        store.dispose()
        if cap:
            import torch

            from harness.hardware import cuda_index

            torch.cuda.set_per_process_memory_fraction(1.0, cuda_index(device))  # the cap is per process: lift it


def _plan_budget(config: RunConfig, spec: ModelSpec, device: str, plans: list[TaskPlan], tokenizer: Any,
                 chat: bool) -> Any:
    """The hardware.BudgetPlan of this run: model shape + the tasks' measured request lengths vs the profile."""
    from harness import hardware

    profile = hardware.get_profile(config.hardware, config.profiles)
    if profile.kind == "cpu" and device.startswith("cuda"):
        raise KobenchError(f"--hardware {profile.name}: a CPU profile, but the run is on {device}. "
                           "Pass --device cpu, or a GPU profile")
    dims = hardware.ModelDims.from_config(hardware.read_model_config(spec.load_path, spec.trust_remote_code))
    params = hardware.model_params(spec.load_path, dims, spec.adapter_path)
    # lm-eval's context length: the config's, else the tokenizer's (unless "unlimited"), else 2048
    tokenizer_max = getattr(tokenizer, "model_max_length", None) or 0
    max_length = dims.max_position_embeddings or (tokenizer_max if 0 < tokenizer_max < 10**9 else 2048)
    shapes = hardware.measure_task_shapes(_task_manager(config, plans, chat), [(p.info.name, p.indices) for p in plans],
                                          tokenizer, int(max_length), chat, config.num_fewshot, config.seed)
    budget = hardware.plan_budget(profile, dims, params, shapes, config.quantize, config.dtype, config.batch_size)
    if budget.fits and budget.quantization and not device.startswith("cuda"):
        raise KobenchError(f"--hardware {profile.name}: the model fits only as {budget.quantization}, which needs "
                           f"a CUDA GPU (bitsandbytes), and this run is on {device}. Run it on a GPU")
    return budget


def _task_manager(config: RunConfig, plans: list[TaskPlan], chat: bool) -> Any:
    """lm-eval's TaskManager over tasks/, with the run's data overrides and options for the task loaders.

    `kobench_chat` tells a loader whether the chat template will wrap the prompt (a task such as ko_md_translation
    then sends the bare source as the user turn instead of its plain-text frame).
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_dir()), include_defaults=False, metadata={
        "kobench_data": config.data,
        "kobench_categories": {p.info.name: config.categories for p in plans} if config.categories else {},
        "kobench_refined": config.refined, "kobench_chat": chat})


def _load_tokenizer(spec: ModelSpec, progress: Progress) -> Any:
    from transformers import AutoTokenizer

    from harness.models import EMBEDDED_MODELS, convert_embedded

    if spec.details.get("embedded") and not spec.load_path:
        spec.load_path = str(convert_embedded(EMBEDDED_MODELS[spec.name], lambda msg: progress("status", text=msg)))
    source = spec.adapter_path if spec.adapter_path and (Path(spec.adapter_path) / "tokenizer_config.json").exists() \
        else spec.load_path
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise KobenchError(f"--model {spec.name}: {source} needs custom code from its repository (auto_map in "
                               "its config), which kobench never runs unasked. Read that code, then pass "
                               "--trust-remote-code if you trust it") from None
        raise KobenchError(f"--model {spec.name}: cannot load its tokenizer from {source} "
                           f"({str(exc).splitlines()[0][:200]})") from None


def _dtype_name(dtype: str, device: str) -> str:
    from harness.models import resolve_dtype

    return str(resolve_dtype(dtype, device)).replace("torch.", "")


def _run_with_store(config: RunConfig, spec: ModelSpec, device: str, plans: list[TaskPlan], chat: bool,
                    dtype_name: str, model_identity: str, store: Any, progress: Progress, budget: Any = None,
                    quantization: str | None = None, cap: dict[str, Any] | None = None, parallel: Any = None,
                    dp: Any = None) -> RunResult:
    records.mark_stale_runs(store)
    over_budget = budget is not None and not budget.fits
    reusable = {} if config.force or over_budget else {
        p.info.name: records.find_reusable(store, p.fingerprint) for p in plans}
    todo = [p for p in plans if not reusable.get(p.info.name)]
    if dp:  # the follower ranks compute exactly these tasks with rank 0
        dp.share_todo([] if over_budget else [p.info.name for p in todo])
    model = lm = None
    n_params = budget.worst.n_params if budget else None
    if todo and not over_budget:
        precision = f" as {budget.precision} under {budget.profile.name}" if budget else ""
        progress("status", text=f"loading {spec.display_name} on {device}{precision}")
        batch = str(budget.batch_sizes[todo[0].info.name]) if budget and config.batch_size == "auto" \
            else config.batch_size
        if parallel is not None and parallel.own_loader:  # --parallelize or --backend vllm: lm-eval loads it
            lm, n_params = multigpu.load_lm(spec, device, config.dtype, batch, parallel, config)
        else:
            model, tokenizer = load_model(spec, device, budget.compute_dtype if budget else config.dtype,
                                          quantization)
            n_params = count_parameters(model)
            lm = make_lm(model, tokenizer, batch, device, decode=config.decode)
        if dp:
            dp.attach(lm)

    base_id = None
    if spec.adapter_path:
        base_spec = ModelSpec(**{**spec.to_dict(), "adapter_path": None, "adapter_hash": None, "adapter_base": None})
        base_id = records.get_or_create_model(store, identity_key(base_spec, dtype_name, quantization), kind="model",
                                              name=spec.name, source=spec.source, revision=spec.revision,
                                              weights_hash=spec.weights_hash, dtype=dtype_name,
                                              quantization=quantization)
    model_id = records.get_or_create_model(
        store, model_identity, kind="adapter" if spec.adapter_path else "model", name=spec.display_name,
        source=spec.source, revision=spec.revision, weights_hash=spec.weights_hash, n_params=n_params,
        dtype=dtype_name, quantization=quantization, base_model_id=base_id, adapter_hash=spec.adapter_hash,
        adapter_path=spec.adapter_path, details={k: v for k, v in spec.details.items() if k != "gguf"})
    seeds = {"random": config.seed, "numpy": config.seed, "torch": config.seed, "fewshot": config.seed}
    run_config = config.to_dict()
    if budget:
        run_config["budget"] = budget.to_dict()
    if cap:
        run_config["memory_cap"] = cap
    if parallel is not None and not parallel.is_default:
        run_config["parallel"] = {**parallel.to_dict(), "world_size": dp.world_size if dp else 1}
    run_id = records.create_run(
        store, model_id, hardware=config.hardware, config=run_config, versions=environment_versions(),
        seeds=seeds, generation_config={p.info.name: p.info.raw.get("generation_kwargs") for p in plans
                                        if p.info.output_type == "generate_until"},
        task_versions={p.info.name: p.info.version for p in plans},
        data_hashes={p.info.name: p.data_hash for p in plans},
        chat_template=(getattr(lm.tokenizer, "chat_template", None) if lm and chat else None))
    result = RunResult(run_id=run_id, model=spec.name, adapter=spec.adapter_path, hardware=config.hardware,
                       status="running", budget=budget.to_dict() if budget else None)
    if over_budget:
        # not a user mistake: the answer to "does it run on this card?" is no, and that is worth keeping
        result.status, result.error = "budget_exceeded", budget.summary()
        records.finish_run(store, run_id, "budget_exceeded", result.error, wall_s=0.0)
        return result
    start = time.perf_counter()
    peak = 0.0
    gen_rates: list[float] = []
    prompt_rates: list[float] = []
    exceeded: list[str] = []
    heartbeat = records.Heartbeat(store, run_id).start()  # a long task still shows the run alive
    try:
        task_manager = _task_manager(config, plans, chat)
        start_batch = getattr(lm, "batch_size_per_gpu", None)
        for index, plan in enumerate(plans, start=1):
            name = plan.info.name
            source = reusable.get(name)
            if source is not None:
                records.reuse_task(store, run_id, source)
                progress("task_reused", task=name, index=index, total=len(plans), source_run=source.run_id)
                result.reused.append(name)
                outcome_scores = _stored_scores(store, source.id)
                result.scores[name] = outcome_scores
                result.n[name] = source.n
                continue
            progress("task_start", task=name, index=index, total=len(plans), n=plan.n_items)
            if budget and config.batch_size == "auto":
                lm.batch_size_per_gpu = budget.batch_sizes[name]
            elif start_batch is not None:  # an out-of-memory retry lowers the batch of its own task only
                lm.batch_size_per_gpu = start_batch
            outcome = _evaluate_within_memory(lm, plan, config, chat, task_manager, device, progress)
            outcome.details["precision"] = quantization or dtype_name
            if budget:
                outcome.details["hardware"] = budget.profile.name
                outcome.details["estimate"] = budget.estimates[name].to_dict()
            records.write_task(store, run_id, outcome)
            if cut := outcome.details.get("truncated"):
                progress("status", text=f"warning: {name}: {cut['count']} of {outcome.n} prompts (e.g. item "
                                        f"{cut['items'][0]}) exceed the model's {cut['context']}-token context; "
                                        "lm-eval cut them from the left (recorded in the task details)")
            peak = max(peak, outcome.peak_mem_mb or 0.0)
            if outcome.gen_tokens_per_s:
                gen_rates.append(outcome.gen_tokens_per_s)
            if outcome.prompt_tokens_per_s:
                prompt_rates.append(outcome.prompt_tokens_per_s)
            if outcome.status == "budget_exceeded":
                exceeded.append(name)
                progress("status", text=f"{name}: {outcome.error}")
            result.scores[name] = {s["metric"]: s["value"] for s in outcome.scores if "[" not in s["metric"]}
            result.n[name] = outcome.n
            progress("task_done", task=name, index=index, total=len(plans), wall_s=outcome.wall_s,
                     main=result.scores[name].get(plan.info.main_metric))
    except BaseException as exc:
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {exc}"
        try:
            records.finish_run(store, run_id, "failed", result.error, wall_s=time.perf_counter() - start,
                               peak_mem_mb=peak or None)
        except SQLAlchemyError:
            pass  # the store refuses writes (disk full, read-only): the next run marks this one failed as stale
        raise
    finally:
        heartbeat.stop()
    # A task that ran out of memory even at batch size 1 makes the whole run budget_exceeded (its other tasks keep
    # their scores and can be reused, but the ranking counts only runs that are done).
    result.status = "budget_exceeded" if exceeded else "done"
    if exceeded:
        result.error = f"budget exceeded: {', '.join(exceeded)} ran out of memory at batch size 1"
    result.wall_s = time.perf_counter() - start
    result.peak_mem_mb = round(peak, 1) if peak else None
    records.finish_run(store, run_id, result.status, result.error, wall_s=result.wall_s,
                       peak_mem_mb=result.peak_mem_mb,
                       gen_tokens_per_s=sum(gen_rates) / len(gen_rates) if gen_rates else None,
                       prompt_tokens_per_s=sum(prompt_rates) / len(prompt_rates) if prompt_rates else None)
    return result


def _evaluate_within_memory(lm: Any, plan: TaskPlan, config: RunConfig, chat: bool, task_manager: Any,
                            device: str, progress: Progress) -> records.TaskOutcome:
    """evaluate_task, retried at half the batch size after a CUDA out-of-memory error; out of memory at batch
    size 1 ends the task as budget_exceeded (no scores) instead of ending the run."""
    from harness.hardware import is_out_of_memory

    oom_batches: list[int] = []
    start = time.perf_counter()
    while True:
        try:
            outcome = evaluate_task(lm, plan, config, chat, task_manager, device)
            break
        except Exception as exc:  # noqa: BLE001 - anything but OOM is re-raised
            if not is_out_of_memory(exc) or not multigpu.retries_oom(lm):
                raise
            message = str(exc).splitlines()[0][:200]
        # the exception (and the tensors its frames hold) is gone here, so the cache can really be emptied
        batch = _current_batch(lm)
        oom_batches.append(batch)
        peak_mb = _free_cuda_memory(device)
        if batch <= 1:
            outcome = records.TaskOutcome(
                task=plan.info.name, task_version=plan.info.version, data_hash=plan.data_hash,
                fingerprint=plan.fingerprint, status="budget_exceeded",
                error=f"out of memory at batch size 1 ({message})", wall_s=time.perf_counter() - start,
                peak_mem_mb=peak_mb, details={"indices": plan.indices, "batch_size": 1})
            break
        lm.batch_size_per_gpu = batch // 2
        progress("status", text=f"{plan.info.name}: out of memory at batch size {batch}; retrying at {batch // 2}")
    outcome.details["oom_batch_sizes"] = oom_batches
    return outcome


def _current_batch(lm: Any) -> int:
    """The batch size the last attempt used (lm-eval's detected size when it was 'auto')."""
    size = lm.batch_size_per_gpu
    if isinstance(size, int):
        return size
    detected = [v for v in getattr(lm, "batch_sizes", {}).values() if isinstance(v, int)]
    return max(detected) if detected else int(getattr(lm, "max_batch_size", None) or 64)


def _free_cuda_memory(device: str) -> float | None:
    """Release what the failed attempt left in torch's cache; returns that attempt's peak allocated MiB."""
    import gc

    gc.collect()
    if not device.startswith("cuda"):
        return None
    import torch

    from harness.hardware import cuda_index

    peak = torch.cuda.max_memory_allocated(cuda_index(device)) / 2**20
    torch.cuda.empty_cache()
    return round(peak, 1)


def _stored_scores(store: Any, task_result_id: int) -> dict[str, float | None]:
    from sqlalchemy import select

    from harness.store.schema import Score

    with store.session() as session:
        rows = session.execute(select(Score.metric, Score.value).where(Score.task_result_id == task_result_id)).all()
    return {metric: value for metric, value in rows if "[" not in metric}
