"""Flat views of the record for `kobench export`."""
from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from harness.errors import KobenchError
from harness.store.db import Store
from harness.store.schema import Model, Run, Sample, Score, TaskResult

SCORE_COLUMNS = ["run_id", "model", "adapter", "hardware", "status", "task", "metric", "value", "stderr", "n"]


def score_rows(store: Store, run_id: int | None = None) -> list[dict[str, Any]]:
    with store.session() as session:
        query = (select(Score, Run, Model).join(Run, Score.run_id == Run.id).join(Model, Run.model_id == Model.id)
                 .order_by(Score.run_id, Score.id))
        if run_id is not None:
            query = query.where(Score.run_id == run_id)
        return [{"run_id": run.id, "model": model.name, "adapter": model.adapter_path, "hardware": run.hardware,
                 "status": run.status, "task": score.task, "metric": score.metric, "value": score.value,
                 "stderr": score.stderr, "n": score.n} for score, run, model in session.execute(query)]


def sample_rows(store: Store, run_id: int) -> list[dict[str, Any]]:
    """Every sample of a run (following reused task results to where their samples live)."""
    with store.session() as session:
        if session.get(Run, run_id) is None:
            raise KobenchError(f"--run {run_id}: no such run in {store.display_url}. See `kobench show --json`")
        results = session.scalars(select(TaskResult).where(TaskResult.run_id == run_id).order_by(TaskResult.id)).all()
        out = []
        for result in results:
            source = result.reused_from_id or result.id
            for sample in session.scalars(select(Sample).where(Sample.task_result_id == source)
                                          .order_by(Sample.doc_id)):
                out.append({"run_id": run_id, "task": sample.task, "doc_id": sample.doc_id,
                            "item_id": sample.item_id, "prompt": sample.prompt,
                            "output": _maybe_int(sample.output), "target": _maybe_int(sample.target),
                            "metrics": sample.metrics})
        return out


def _maybe_int(value: str) -> Any:
    """Multiple-choice outputs and targets are stored as index strings; export them as integers."""
    try:
        return json.loads(value) if value.lstrip("-").isdigit() else value
    except ValueError:
        return value
