"""The kobench task registry: reads the task YAMLs under tasks/ (the lm-eval include path) and their metadata.

Each task YAML carries a `metadata.kobench` block that lm-eval ignores and kobench reads:

    metadata:
      version: 1.0
      kobench:
        format: ko_context_inference   # data reader in harness.taskdata
        splits: {test: data/test.jsonl, train: data/train.jsonl, dev: data/dev.jsonl}
        main_metric: acc               # ranked metric (lm-eval metric name, filter optional)
        scale: 100                     # multiply to get 0-100 (1 for metrics already on that scale)
        breakdown: [category]          # doc fields to report per-value scores for
        description: ...
"""
from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from harness.errors import KobenchError
from harness.paths import tasks_dir


class _TaskYamlLoader(yaml.SafeLoader):
    """Reads lm-eval YAMLs without importing their `!function` targets."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


@dataclass
class TaskInfo:
    name: str
    yaml_path: Path
    output_type: str
    version: str
    main_metric: str
    scale: float = 100.0
    higher_is_better: bool = True
    data_format: str | None = None
    splits: dict[str, str] = field(default_factory=dict)
    eval_split: str = "test"
    breakdown: list[str] = field(default_factory=list)
    description: str = ""
    metrics: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.yaml_path.parent

    def split_path(self, split: str) -> Path | None:
        rel = self.splits.get(split)
        return (self.folder / rel) if rel else None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=_TaskYamlLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise KobenchError(f"task file {path}: YAML syntax error at {where} "
                           f"({getattr(exc, 'problem', exc)}). Fix the file") from None
    if not isinstance(data, dict):
        raise KobenchError(f"task file {path}: expected a mapping of lm-eval task keys, got {type(data).__name__}")
    if "include" in data:
        base = _read_yaml(path.parent / data["include"])
        data = {**base, **{k: v for k, v in data.items() if k != "include"}}
        if "metadata" in base and "metadata" in data:
            merged = dict(base["metadata"])
            merged.update(data["metadata"])
            merged["kobench"] = {**base["metadata"].get("kobench", {}), **data["metadata"].get("kobench", {})}
            data["metadata"] = merged
    return data


@lru_cache(maxsize=4)
def _discover(root: Path) -> dict[str, TaskInfo]:
    found: dict[str, TaskInfo] = {}
    for path in sorted(root.glob("*/*.yaml")):
        if path.name.startswith("_"):
            continue  # shared bases pulled in with `include:`
        data = _read_yaml(path)
        if "task" not in data:
            continue
        meta = data.get("metadata") or {}
        kob = meta.get("kobench") or {}
        metrics = [m["metric"] for m in data.get("metric_list", []) if isinstance(m, dict) and "metric" in m]
        info = TaskInfo(
            name=data["task"], yaml_path=path, output_type=data.get("output_type", "generate_until"),
            version=str(meta.get("version", "0")), main_metric=kob.get("main_metric", metrics[0] if metrics else "acc"),
            scale=float(kob.get("scale", 100)), higher_is_better=bool(kob.get("higher_is_better", True)),
            data_format=kob.get("format"), splits=dict(kob.get("splits", {})),
            eval_split=data.get("test_split") or data.get("validation_split") or "test",
            breakdown=list(kob.get("breakdown", [])), description=kob.get("description", ""),
            metrics=metrics, raw=data)
        if info.name in found:
            raise KobenchError(f"task {info.name} is defined twice: {found[info.name].yaml_path} and {path}")
        found[info.name] = info
    return found


def discover_tasks(root: Path | None = None) -> dict[str, TaskInfo]:
    """All kobench tasks by name."""
    return _discover((root or tasks_dir()).resolve())


def get_task(name: str, root: Path | None = None) -> TaskInfo:
    tasks = discover_tasks(root)
    if name not in tasks:
        near = difflib.get_close_matches(name, list(tasks), n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise KobenchError(f"--tasks {name}: unknown task.{hint} Known tasks: {', '.join(sorted(tasks))} "
                           "(see `kobench tasks`)")
    return tasks[name]


def data_hash(paths: list[Path]) -> str:
    """sha256 over the bytes of the data files a task evaluation reads (eval split + few-shot split)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def check_metrics(info: TaskInfo) -> TaskInfo:
    """Refuse a task whose metrics lm-eval cannot compute or whose main metric it does not produce: lm-eval would
    otherwise run the whole task and store no score for it, or a ranking column that is always empty."""
    import lm_eval.api.metrics  # noqa: F401  (fills lm-eval's metric and aggregation registries)
    from lm_eval.api.registry import AGGREGATION_REGISTRY, METRIC_REGISTRY

    where = f"task file {info.yaml_path}"
    for entry in info.raw.get("metric_list") or []:
        name, aggregation = entry.get("metric"), entry.get("aggregation")
        # with process_results, the task's utils.py computes every metric itself
        if not info.raw.get("process_results") and name not in METRIC_REGISTRY and not entry.get("hf_evaluate"):
            near = difflib.get_close_matches(str(name), list(METRIC_REGISTRY), n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise KobenchError(f"{where}: metric '{name}' is not an lm-eval metric.{hint} Fix metric_list, or compute "
                               "it in the task's utils.process_results")
        if isinstance(aggregation, str) and not aggregation.startswith("!function") \
                and aggregation not in AGGREGATION_REGISTRY:
            raise KobenchError(f"{where}: metric '{name}' has unknown aggregation '{aggregation}'. Use one of "
                               f"{', '.join(sorted(AGGREGATION_REGISTRY))} or !function utils.NAME")
    if info.metrics and info.main_metric.partition(",")[0] not in info.metrics:
        raise KobenchError(f"{where}: main_metric '{info.main_metric}' is not one of its metrics "
                           f"({', '.join(info.metrics)}). Fix metadata.kobench.main_metric")
    return info
