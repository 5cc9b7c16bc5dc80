"""Runs a suite on one model through lm-eval and writes every finished task to the results store at once.

Flow: validate config -> resolve model -> plan tasks (data hashes, item subsets, fingerprints) -> reuse finished
tasks from the store -> load the model only if something is left -> evaluate task by task -> finish the run.
Nothing is written to the store before the model has loaded, so a user mistake leaves the store untouched.
"""
from __future__ import annotations

import hashlib
import json
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
    """kobench runs offline unless --online: lm-eval and transformers otherwise wait on hub timeouts."""
    if not online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class TaskPlan:
    info: TaskInfo
    data_paths: list[Path]
    data_hash: str
    indices: list[int] | None
    n_items: int
    fingerprint: str = ""


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

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "model": self.model, "adapter": self.adapter, "hardware": self.hardware,
                "status": self.status, "scores": self.scores, "n": self.n, "wall_s": round(self.wall_s, 3),
                "peak_mem_mb": self.peak_mem_mb}


def stratified_indices(docs: list[dict[str, Any]], count: int, field_name: str | None) -> list[int]:
    """A fixed subset of `count` items spread round-robin over the values of `field_name` (file order within each)."""
    if count >= len(docs):
        return list(range(len(docs)))
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, doc in enumerate(docs):
        groups[doc.get(field_name) if field_name else None].append(i)
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

    suite_items = (load_suites().get(config.suite or "", {}) or {}).get("items") or {}
    plans = []
    for name in config.tasks:
        info = get_task(name)
        eval_path = Path(config.data[name]) if name in config.data else info.split_path(info.eval_split)
        fewshot_split = info.raw.get("fewshot_split")
        paths = [eval_path] + ([info.split_path(fewshot_split)] if fewshot_split and info.split_path(fewshot_split) else [])
        docs = read_records(eval_path, info.data_format)
        if config.categories:
            docs = [d for d in docs if d.get("category") in set(config.categories)]
            if not docs:
                raise KobenchError(f"--categories {','.join(config.categories)}: no {name} items in those categories")
        count = suite_items.get(name) or suite_items.get(info.output_type) or suite_items.get("default")
        if config.limit is not None:
            count = min(count or config.limit, config.limit)
        indices = stratified_indices(docs, count, info.breakdown[0] if info.breakdown else None) if count else None
        plans.append(TaskPlan(info=info, data_paths=paths, data_hash=data_hash(paths), indices=indices,
                              n_items=len(indices) if indices is not None else len(docs)))
    return plans


def _fingerprint(plan: TaskPlan, model_identity: str, config: RunConfig, chat: bool) -> str:
    parts = {"model": model_identity, "task": plan.info.name, "version": plan.info.version,
             "code": _task_code_hash(plan.info), "data": plan.data_hash, "indices": plan.indices,
             "fewshot": config.num_fewshot, "chat": chat, "seed": config.seed, "categories": config.categories,
             "refined": config.refined, "generation": plan.info.raw.get("generation_kwargs")}
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
    """Peak memory of this process during a block: CUDA peak allocated on GPU, sampled RSS on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc = psutil.Process()

            def sample() -> None:
                while not self._stop.is_set():
                    self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
                    self._stop.wait(0.1)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            import torch

            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            if self._thread:
                self._thread.join()


def make_lm(model: Any, tokenizer: Any, batch_size: str, device: str) -> Any:
    """lm-eval's HF backend around an already-loaded model, counting tokens and time per request type."""
    from lm_eval.models.huggingface import HFLM

    class KobenchLM(HFLM):
        def reset_counters(self) -> None:
            self.counters = {"prompt_tokens": 0, "gen_tokens": 0, "prompt_s": 0.0, "gen_s": 0.0}

        def loglikelihood(self, requests, disable_tqdm: bool = False):  # noqa: ANN001, ANN201
            start = time.perf_counter()
            out = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
            self.counters["prompt_s"] += time.perf_counter() - start
            self.counters["prompt_tokens"] += sum(len(self.tok_encode(r.args[0] + r.args[1])) for r in requests)
            return out

        def generate_until(self, requests, disable_tqdm: bool = False):  # noqa: ANN001, ANN201
            start = time.perf_counter()
            out = super().generate_until(requests, disable_tqdm=disable_tqdm)
            self.counters["gen_s"] += time.perf_counter() - start
            self.counters["prompt_tokens"] += sum(len(self.tok_encode(r.args[0])) for r in requests)
            self.counters["gen_tokens"] += sum(len(self.tok_encode(text)) for text in out)
            return out

    if batch_size == "auto" and not device.startswith("cuda"):
        batch_size = str(CPU_DEFAULT_BATCH)  # lm-eval's auto probe runs max-length forwards: minutes on a CPU
    lm = KobenchLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    lm.reset_counters()
    return lm


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
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
                  device: str) -> records.TaskOutcome:
    from lm_eval import simple_evaluate

    lm.reset_counters()
    start = time.perf_counter()
    with MemorySampler(device) as memory:
        results = simple_evaluate(
            model=lm, tasks=[plan.info.name], task_manager=task_manager, num_fewshot=config.num_fewshot,
            samples={plan.info.name: plan.indices} if plan.indices is not None else None, log_samples=True,
            apply_chat_template=chat, fewshot_as_multiturn=chat and bool(config.num_fewshot),
            bootstrap_iters=config.bootstrap_iters, random_seed=config.seed, numpy_random_seed=config.seed,
            torch_random_seed=config.seed, fewshot_random_seed=config.seed, verbosity="ERROR")
    wall = time.perf_counter() - start
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
                 "generation_kwargs": plan.info.raw.get("generation_kwargs")})


def _chat_enabled(config: RunConfig, tokenizer: Any) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if config.chat_template == "on" and not has_template:
        raise KobenchError(f"--chat-template on: model {config.model} has no chat template. Use auto or off")
    return has_template if config.chat_template == "auto" else config.chat_template == "on"


def run(config: RunConfig, progress: Progress | None = None) -> RunResult:
    """Evaluate one model on the configured tasks; returns what `kobench run --json` prints."""
    progress = progress or (lambda *a, **k: None)
    offline_env(config.online)
    config.validate()
    spec = resolve_model(config.model, config.adapter, online=config.online, trust_remote_code=config.trust_remote_code)
    device = select_device(config.device)
    plans = plan_tasks(config)
    # The tokenizer decides whether the chat template applies, which is part of every task's fingerprint.
    tokenizer = _load_tokenizer(spec, progress)
    chat = _chat_enabled(config, tokenizer)
    dtype_name = _dtype_name(config.dtype, device)
    model_identity = identity_key(spec, dtype_name, None)
    for plan in plans:
        plan.fingerprint = _fingerprint(plan, model_identity, config, chat)

    store = open_store(config.db)
    try:
        return _run_with_store(config, spec, device, plans, chat, dtype_name, model_identity, store, progress)
    finally:
        store.dispose()


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
        raise KobenchError(f"--model {spec.name}: cannot load its tokenizer from {source} "
                           f"({str(exc).splitlines()[0][:200]})") from None


def _dtype_name(dtype: str, device: str) -> str:
    from harness.models import resolve_dtype

    return str(resolve_dtype(dtype, device)).replace("torch.", "")


def _run_with_store(config: RunConfig, spec: ModelSpec, device: str, plans: list[TaskPlan], chat: bool,
                    dtype_name: str, model_identity: str, store: Any, progress: Progress) -> RunResult:
    records.mark_stale_runs(store)
    reusable = {} if config.force else {p.info.name: records.find_reusable(store, p.fingerprint) for p in plans}
    todo = [p for p in plans if not reusable.get(p.info.name)]
    model = lm = None
    n_params = None
    if todo:
        progress("status", text=f"loading {spec.display_name} on {device}")
        model, tokenizer = load_model(spec, device, config.dtype, None)
        n_params = count_parameters(model)
        lm = make_lm(model, tokenizer, config.batch_size, device)

    base_id = None
    if spec.adapter_path:
        base_spec = ModelSpec(**{**spec.to_dict(), "adapter_path": None, "adapter_hash": None, "adapter_base": None})
        base_id = records.get_or_create_model(store, identity_key(base_spec, dtype_name, None), kind="model",
                                              name=spec.name, source=spec.source, revision=spec.revision,
                                              weights_hash=spec.weights_hash, dtype=dtype_name)
    model_id = records.get_or_create_model(
        store, model_identity, kind="adapter" if spec.adapter_path else "model", name=spec.display_name,
        source=spec.source, revision=spec.revision, weights_hash=spec.weights_hash, n_params=n_params,
        dtype=dtype_name, quantization=None, base_model_id=base_id, adapter_hash=spec.adapter_hash,
        adapter_path=spec.adapter_path, details={k: v for k, v in spec.details.items() if k != "gguf"})
    seeds = {"random": config.seed, "numpy": config.seed, "torch": config.seed, "fewshot": config.seed}
    run_id = records.create_run(
        store, model_id, hardware=config.hardware, config=config.to_dict(), versions=environment_versions(),
        seeds=seeds, generation_config={p.info.name: p.info.raw.get("generation_kwargs") for p in plans
                                        if p.info.output_type == "generate_until"},
        task_versions={p.info.name: p.info.version for p in plans},
        data_hashes={p.info.name: p.data_hash for p in plans},
        chat_template=(getattr(lm.tokenizer, "chat_template", None) if lm and chat else None))
    result = RunResult(run_id=run_id, model=spec.name, adapter=spec.adapter_path, hardware=config.hardware,
                       status="running")
    start = time.perf_counter()
    peak = 0.0
    gen_rates: list[float] = []
    prompt_rates: list[float] = []
    try:
        from lm_eval.tasks import TaskManager

        task_manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False, metadata={
            "kobench_data": config.data,
            "kobench_categories": {p.info.name: config.categories for p in plans} if config.categories else {},
            "kobench_refined": config.refined})
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
            outcome = evaluate_task(lm, plan, config, chat, task_manager, device)
            records.write_task(store, run_id, outcome)
            peak = max(peak, outcome.peak_mem_mb or 0.0)
            if outcome.gen_tokens_per_s:
                gen_rates.append(outcome.gen_tokens_per_s)
            if outcome.prompt_tokens_per_s:
                prompt_rates.append(outcome.prompt_tokens_per_s)
            result.scores[name] = {s["metric"]: s["value"] for s in outcome.scores if "[" not in s["metric"]}
            result.n[name] = outcome.n
            progress("task_done", task=name, index=index, total=len(plans), wall_s=outcome.wall_s,
                     main=result.scores[name].get(plan.info.main_metric))
    except BaseException as exc:
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {exc}"
        records.finish_run(store, run_id, "failed", result.error, wall_s=time.perf_counter() - start,
                           peak_mem_mb=peak or None)
        raise
    result.status = "done"
    result.wall_s = time.perf_counter() - start
    result.peak_mem_mb = round(peak, 1) if peak else None
    records.finish_run(store, run_id, "done", wall_s=result.wall_s, peak_mem_mb=result.peak_mem_mb,
                       gen_tokens_per_s=sum(gen_rates) / len(gen_rates) if gen_rates else None,
                       prompt_tokens_per_s=sum(prompt_rates) / len(prompt_rates) if prompt_rates else None)
    return result


def _stored_scores(store: Any, task_result_id: int) -> dict[str, float | None]:
    from sqlalchemy import select

    from harness.store.schema import Score

    with store.session() as session:
        rows = session.execute(select(Score.metric, Score.value).where(Score.task_result_id == task_result_id)).all()
    return {metric: value for metric, value in rows if "[" not in metric}
