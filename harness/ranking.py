"""The ranking: one row per model + adapter + hardware profile, from finished runs only.

For each row and task, the newest finished result counts. Scores are the task's main metric on a 0-100 scale; the
average is over the tasks the row has, and rows are ranked by it (rows with fewer tasks are flagged by `n_tasks`).
Runs that failed or are still running never contribute, so a crashed run's partial scores stay out of the ranking.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select

from harness.store.db import Store
from harness.store.schema import Model, Run, Score, TaskResult
from harness.tasks import discover_tasks


@dataclass
class RankingRow:
    rank: int
    model: str
    kind: str
    hardware: str
    model_id: int
    base_model: str | None
    adapter: str | None
    n_params: int | None
    dtype: str | None
    quantization: str | None
    scores: dict[str, float | None] = field(default_factory=dict)
    average: float | None = None
    n_tasks: int = 0
    peak_mem_mb: float | None = None
    gen_tokens_per_s: float | None = None
    run_ids: list[int] = field(default_factory=list)
    task_result_ids: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def main_metric(task: str) -> tuple[str, float]:
    """(metric name, scale to 0-100) of a task; unknown tasks fall back to acc on a 0-1 scale."""
    info = discover_tasks().get(task)
    return (info.main_metric, info.scale) if info else ("acc", 100.0)


def ranking(store: Store, hardware: str | None = None, tasks: list[str] | None = None) -> list[RankingRow]:
    with store.session() as session:
        query = (select(TaskResult, Run, Model).join(Run, TaskResult.run_id == Run.id)
                 .join(Model, Run.model_id == Model.id).where(Run.status == "done", TaskResult.status == "done")
                 .order_by(TaskResult.id))
        if hardware:
            query = query.where(Run.hardware == hardware)
        latest: dict[tuple[int, str], dict[str, tuple[TaskResult, Run]]] = {}
        models: dict[int, Model] = {}
        for result, run, model in session.execute(query):
            if tasks and result.task not in tasks:
                continue
            models[model.id] = model
            latest.setdefault((model.id, run.hardware), {})[result.task] = (result, run)
        base_names = {m.id: m.name for m in session.scalars(select(Model))}
        score_rows = {}
        wanted = [r.id for group in latest.values() for r, _ in group.values()]
        for chunk in range(0, len(wanted), 500):
            ids = wanted[chunk:chunk + 500]
            for score in session.scalars(select(Score).where(Score.task_result_id.in_(ids))):
                score_rows.setdefault(score.task_result_id, {})[score.metric] = score.value
    rows = []
    for (model_id, hw), by_task in latest.items():
        model = models[model_id]
        row = RankingRow(rank=0, model=model.name, kind=model.kind, hardware=hw, model_id=model_id,
                         base_model=base_names.get(model.base_model_id) if model.base_model_id else None,
                         adapter=model.adapter_path, n_params=model.n_params, dtype=model.dtype,
                         quantization=model.quantization)
        peaks, rates = [], []
        for task, (result, run) in sorted(by_task.items()):
            metric, scale = main_metric(task)
            value = score_rows.get(result.id, {}).get(metric)
            row.scores[task] = None if value is None else round(value * scale, 2)
            row.task_result_ids[task] = result.id
            if run.id not in row.run_ids:
                row.run_ids.append(run.id)
            if result.peak_mem_mb:
                peaks.append(result.peak_mem_mb)
            if result.gen_tokens_per_s:
                rates.append(result.gen_tokens_per_s)
        present = [v for v in row.scores.values() if v is not None]
        row.n_tasks = len(present)
        row.average = round(sum(present) / len(present), 2) if present else None
        row.peak_mem_mb = round(max(peaks), 1) if peaks else None
        row.gen_tokens_per_s = round(sum(rates) / len(rates), 2) if rates else None
        rows.append(row)
    rows.sort(key=lambda r: (-(r.n_tasks), -(r.average if r.average is not None else -1e9), r.model))
    for i, row in enumerate(rows, start=1):
        row.rank = i
    return rows
