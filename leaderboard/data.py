"""What the leaderboard shows, as pandas DataFrames read from a (read-only) Store: testable without Streamlit.

Scores are on the ranking's 0-100 scale (a task's main metric x its scale). Confidence intervals and paired tests use
the per-sample values the runner stored in samples.metrics; for a corpus metric (chrF, BLEU) that has no per-sample
value, its sentence-level counterpart (`chrf_sentence`) stands in, and the frame says so (`MetricBasis.note`).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from harness import stats
from harness.errors import KobenchError
from harness.ranking import main_metric, ranking
from harness.store.db import Store
from harness.store.schema import Model, Run, Sample, Score, TaskResult
from harness.tasks import discover_tasks

KIND_LABELS = {"model": "zero-shot", "adapter": "fine-tuned", "ensemble": "ensemble"}
# Fewer resamples than harness.stats' default: the ranking bootstraps every row x task on each page load.
RANKING_RESAMPLES = 2_000
_BREAKDOWN_NAME = re.compile(r"^(?P<metric>[^\[]+)\[(?P<field>[^=\]]+)=(?P<group>.*)\]$")


@dataclass(frozen=True)
class MetricBasis:
    """Which per-sample values stand for a task's main metric in intervals and paired tests."""

    task: str
    metric: str
    scale: float
    sample_metric: str | None

    @property
    def is_proxy(self) -> bool:
        return self.sample_metric is not None and self.sample_metric != self.metric

    @property
    def note(self) -> str:
        if self.sample_metric is None:
            return f"{self.task}: no per-sample values of {self.metric} stored, so no interval"
        if self.is_proxy:
            return (f"{self.task}: {self.metric} is a corpus metric; its interval resamples items using the "
                    f"per-sample {self.sample_metric} (mean of per-item scores), so it is centred on that mean, "
                    f"not on the corpus score")
        return f"{self.task}: interval resamples items using the per-sample {self.metric}"


def metric_basis(task: str, sample_keys: Iterable[str]) -> MetricBasis:
    """The task's main metric, or its `<name>_sentence` per-sample stand-in when only the corpus value exists."""
    metric, scale = main_metric(task)
    keys = set(sample_keys)
    if metric in keys:
        return MetricBasis(task, metric, scale, metric)
    name, _, filt = metric.partition(",")
    proxy = f"{name}_sentence" + (f",{filt}" if filt else "")
    return MetricBasis(task, metric, scale, proxy if proxy in keys else None)


def _sample_source(session: Any, task_result_id: int) -> int:
    result = session.get(TaskResult, task_result_id)
    return result.reused_from_id or result.id


def _sample_metrics(store: Store, task_result_ids: Iterable[int]) -> dict[int, dict[int, dict[str, Any]]]:
    """{task_result_id: {doc_id: metrics}} following reused results to where their samples live."""
    out: dict[int, dict[int, dict[str, Any]]] = {}
    with store.session() as session:
        sources = {rid: _sample_source(session, rid) for rid in task_result_ids}
        wanted = sorted(set(sources.values()))
        by_source: dict[int, dict[int, dict[str, Any]]] = {}
        for start in range(0, len(wanted), 500):
            query = (select(Sample.task_result_id, Sample.doc_id, Sample.metrics)
                     .where(Sample.task_result_id.in_(wanted[start:start + 500])))
            for source, doc_id, metrics in session.execute(query):
                by_source.setdefault(source, {})[doc_id] = metrics or {}
    for rid, source in sources.items():
        out[rid] = by_source.get(source, {})
    return out


def _numeric_keys(samples: Iterable[dict[str, Any]]) -> set[str]:
    return {k for metrics in samples for k, v in metrics.items()
            if not k.startswith("_") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _values(samples: dict[int, dict[str, Any]], key: str | None) -> np.ndarray:
    if key is None:
        return np.array([])
    return np.array([float(m[key]) for _, m in sorted(samples.items()) if isinstance(m.get(key), (int, float))])


def _precision(dtype: str | None, quantization: str | None) -> str | None:
    parts = [p for p in (dtype, quantization) if p]
    return " / ".join(parts) if parts else None


def ranking_frame(store: Store, hardware: str | None = None, tasks: list[str] | None = None,
                  kinds: list[str] | None = None, params_b: tuple[float, float] | None = None,
                  n_resamples: int = RANKING_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """One row per model + adapter + hardware profile (harness.ranking), with per-task 95% intervals and win rates.

    Columns: rank, model, kind, type, hardware, base, <task>, <task> low, <task> high (per task), average, win_rate
    (0-100, over the rows shown), delta_vs_base (adapters: mean over shared tasks of adapter - base on the same
    hardware), params, precision, peak_mem_mb, tokens_per_s, n_tasks, run_ids, model_id. `kinds` filters on model kind
    (model/adapter/ensemble); `params_b` on parameter count in billions (rows without a count, such as ensembles,
    stay). attrs["tasks"] lists the task columns, attrs["ci_notes"] says which per-sample values each interval used.
    """
    rows = ranking(store, hardware=hardware, tasks=tasks)
    task_names = sorted({t for r in rows for t in r.scores})
    with store.session() as session:
        base_of = dict(session.execute(select(Model.id, Model.base_model_id)).all())
    samples = _sample_metrics(store, [rid for r in rows for rid in r.task_result_ids.values()])
    bases = {task: metric_basis(task, _numeric_keys(m for r in rows if task in r.task_result_ids
                                                     for m in samples[r.task_result_ids[task]].values()))
             for task in task_names}
    by_identity = {(r.model_id, r.hardware): r for r in rows}
    records = []
    for r in rows:
        record: dict[str, Any] = {
            "rank": r.rank, "model": r.model, "kind": r.kind, "type": KIND_LABELS.get(r.kind, r.kind),
            "hardware": r.hardware, "base": r.base_model}
        for task in task_names:
            record[task] = r.scores.get(task)
            record[f"{task} low"] = record[f"{task} high"] = None
            if task in r.task_result_ids:
                basis = bases[task]
                values = _values(samples[r.task_result_ids[task]], basis.sample_metric)
                if values.size:
                    ci = stats.bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
                    record[f"{task} low"] = round(ci.low * basis.scale, 2)
                    record[f"{task} high"] = round(ci.high * basis.scale, 2)
        record["average"] = r.average
        base_row = by_identity.get((base_of.get(r.model_id), r.hardware))
        shared = [t for t in task_names if base_row and r.scores.get(t) is not None
                  and base_row.scores.get(t) is not None]
        record["delta_vs_base"] = (round(sum(r.scores[t] - base_row.scores[t] for t in shared) / len(shared), 2)
                                   if shared else None)
        record.update({"params": r.n_params, "precision": _precision(r.dtype, r.quantization),
                       "peak_mem_mb": r.peak_mem_mb, "tokens_per_s": r.gen_tokens_per_s, "n_tasks": r.n_tasks,
                       "run_ids": list(r.run_ids), "model_id": r.model_id,
                       "base_model_id": base_of.get(r.model_id)})
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=_ranking_columns(task_names))
    if kinds:
        frame = frame[frame["kind"].isin(kinds)]
    if params_b is not None:
        billions = frame["params"].astype(float) / 1e9
        frame = frame[frame["params"].isna() | billions.between(params_b[0], params_b[1])]
    frame = frame.reset_index(drop=True)
    frame["rank"] = range(1, len(frame) + 1)
    if len(frame) and task_names:
        rates = stats.win_rate(frame[task_names].astype(float).to_numpy())
        frame["win_rate"] = [None if np.isnan(v) else round(float(v) * 100, 1) for v in rates]
    frame.attrs["tasks"] = task_names
    frame.attrs["ci_notes"] = {task: basis.note for task, basis in bases.items()}
    return frame


def _ranking_columns(task_names: list[str]) -> list[str]:
    per_task = [c for t in task_names for c in (t, f"{t} low", f"{t} high")]
    return ["rank", "model", "kind", "type", "hardware", "base", *per_task, "average", "win_rate", "delta_vs_base",
            "params", "precision", "peak_mem_mb", "tokens_per_s", "n_tasks", "run_ids", "model_id", "base_model_id"]


def hardware_profiles(store: Store) -> list[str]:
    """Hardware profiles that have at least one finished run."""
    with store.session() as session:
        return sorted(session.scalars(select(Run.hardware).where(Run.status == "done").distinct()))


def finetune_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Zero-shot vs fine-tuned: each adapter row beside its base row (same hardware), one row per shared task."""
    records = []
    by_identity = {(r["model_id"], r["hardware"]): r for r in frame.to_dict("records")}
    for row in frame.to_dict("records"):
        if row["kind"] != "adapter" or pd.isna(row["base_model_id"]):
            continue
        base = by_identity.get((int(row["base_model_id"]), row["hardware"]))
        if base is None:
            continue
        for task in frame.attrs.get("tasks", []):
            if pd.notna(row.get(task)) and pd.notna(base.get(task)):
                records.append({"task": task, "base": base["model"], "adapter": row["model"],
                                "hardware": row["hardware"],
                                "zero_shot": base[task], "fine_tuned": row[task],
                                "delta": round(row[task] - base[task], 2)})
    return pd.DataFrame.from_records(records, columns=["task", "base", "adapter", "hardware", "zero_shot",
                                                       "fine_tuned", "delta"])


def runs_frame(store: Store) -> pd.DataFrame:
    """Every run, finished or not (newest first): the pickers of the detail, samples and compare pages."""
    with store.session() as session:
        query = (select(Run, Model).join(Model, Run.model_id == Model.id).order_by(Run.id.desc()))
        records = []
        for run, model in session.execute(query):
            records.append({"run_id": run.id, "model": model.name, "kind": model.kind, "hardware": run.hardware,
                            "status": run.status, "tasks": [r.task for r in run.task_results],
                            "started_at": run.started_at, "error": run.error})
    return pd.DataFrame.from_records(records, columns=["run_id", "model", "kind", "hardware", "status", "tasks",
                                                       "started_at", "error"])


def run_label(row: dict[str, Any] | pd.Series) -> str:
    return f"run {row['run_id']}: {row['model']} ({row['hardware']}, {row['status']})"


def _run(session: Any, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise KobenchError(f"run {run_id}: no such run in the store. Pick one from the list")
    return run


def run_provenance(store: Store, run_id: int) -> dict[str, Any]:
    """Where a run's numbers come from: model identity, versions, seeds, generation config, data hashes, hardware."""
    with store.session() as session:
        run = _run(session, run_id)
        model = run.model
        base = model.base_model
        return {
            "run_id": run.id, "status": run.status, "error": run.error, "kind": run.kind, "hardware": run.hardware,
            "model": {"name": model.name, "kind": model.kind, "source": model.source, "revision": model.revision,
                      "weights_hash": model.weights_hash, "n_params": model.n_params, "dtype": model.dtype,
                      "quantization": model.quantization, "base_model": base.name if base else None,
                      "adapter_path": model.adapter_path, "adapter_hash": model.adapter_hash,
                      "details": model.details},
            "versions": run.versions, "seeds": run.seeds, "generation_config": run.generation_config,
            "task_versions": run.task_versions, "data_hashes": run.data_hashes, "config": run.config,
            "chat_template": run.chat_template,
            "hardware_figures": {"peak_mem_mb": run.peak_mem_mb, "prompt_tokens_per_s": run.prompt_tokens_per_s,
                                 "gen_tokens_per_s": run.gen_tokens_per_s, "wall_s": run.wall_s, "host": run.host},
            "started_at": run.started_at, "ended_at": run.ended_at,
        }


def task_results_frame(store: Store, run_id: int) -> pd.DataFrame:
    """Each task of a run: status, error, item count, reuse, data hash and the task's hardware figures."""
    with store.session() as session:
        run = _run(session, run_id)
        records = [{"task": r.task, "status": r.status, "error": r.error, "n": r.n, "reused_from": r.reused_from_id,
                    "task_version": r.task_version, "data_hash": r.data_hash, "wall_s": r.wall_s,
                    "peak_mem_mb": r.peak_mem_mb, "prompt_tokens_per_s": r.prompt_tokens_per_s,
                    "gen_tokens_per_s": r.gen_tokens_per_s} for r in run.task_results]
    return pd.DataFrame.from_records(records, columns=["task", "status", "error", "n", "reused_from", "task_version",
                                                       "data_hash", "wall_s", "peak_mem_mb", "prompt_tokens_per_s",
                                                       "gen_tokens_per_s"])


def run_scores_frame(store: Store, run_id: int) -> pd.DataFrame:
    """Every stored metric of a run, per-category breakdowns (`acc[category=원인]`) split into field and group."""
    with store.session() as session:
        _run(session, run_id)
        scores = session.scalars(select(Score).where(Score.run_id == run_id).order_by(Score.id)).all()
        records = []
        for s in scores:
            match = _BREAKDOWN_NAME.match(s.metric)
            metric, field, group = (match["metric"], match["field"], match["group"]) if match else (s.metric, None,
                                                                                                    None)
            records.append({"task": s.task, "metric": metric, "breakdown": field, "group": group, "value": s.value,
                            "stderr": s.stderr, "n": s.n, "main": metric == main_metric(s.task)[0]})
    return pd.DataFrame.from_records(records, columns=["task", "metric", "breakdown", "group", "value", "stderr", "n",
                                                       "main"])


def _task_result(session: Any, run_id: int, task: str) -> TaskResult:
    result = session.scalar(select(TaskResult).where(TaskResult.run_id == run_id, TaskResult.task == task))
    if result is None:
        raise KobenchError(f"run {run_id} has no result for task {task}. Pick a task the run evaluated")
    return result


def samples_frame(store: Store, run_id: int, task: str) -> pd.DataFrame:
    """Every item of one task in one run: prompt, output, reference, the main score (0-100) and all per-sample metrics.

    `score` is the main metric's per-sample value x the task scale (the stand-in for corpus metrics: attrs["basis"]).
    Breakdown fields (category, topic, ...) become columns; `extracted` is the answer a filter pulled from the output.
    """
    with store.session() as session:
        _run(session, run_id)
        result = _task_result(session, run_id, task)
        source = result.reused_from_id or result.id
        samples = session.scalars(select(Sample).where(Sample.task_result_id == source).order_by(Sample.doc_id)).all()
        rows = [(s.doc_id, s.item_id, s.prompt, s.output, s.target, dict(s.metrics or {})) for s in samples]
    basis = metric_basis(task, _numeric_keys(m for *_, m in rows))
    info = discover_tasks().get(task)
    fields = sorted({k[1:] for *_, m in rows for k in m if k.startswith("_") and k != "_extracted"},
                    key=lambda f: (info is None or f not in info.breakdown, f))
    metric_names = sorted(_numeric_keys(m for *_, m in rows))
    records = []
    for doc_id, item_id, prompt, output, target, metrics in rows:
        value = metrics.get(basis.sample_metric) if basis.sample_metric else None
        record = {"doc_id": doc_id, "item_id": item_id,
                  **{f: None if metrics.get(f"_{f}") is None else str(metrics[f"_{f}"]) for f in fields},
                  "score": None if value is None else float(value) * basis.scale,
                  "prompt": prompt, "output": output, "extracted": metrics.get("_extracted"), "target": target}
        record.update({m: metrics.get(m) for m in metric_names})
        records.append(record)
    columns = ["doc_id", "item_id", *fields, "score", "prompt", "output", "extracted", "target", *metric_names]
    frame = pd.DataFrame.from_records(records, columns=columns)
    frame.attrs["basis"] = basis
    frame.attrs["breakdown_fields"] = fields
    return frame


def filter_samples(frame: pd.DataFrame, search: str = "", below: float | None = None) -> pd.DataFrame:
    """Items whose prompt, output, reference or id contains `search` (case-insensitive) and, with `below`, whose score
    is under it (below=100 on a 0/1 task = the wrong items). Items without a score are kept only without `below`."""
    keep = pd.Series(True, index=frame.index)
    if search:
        needle = search.casefold()
        text = (frame["prompt"].fillna("") + "\n" + frame["output"].fillna("") + "\n" + frame["target"].fillna("")
                + "\n" + frame["item_id"].fillna("").astype(str))
        keep &= text.str.casefold().str.contains(needle, regex=False)
    if below is not None:
        keep &= frame["score"].notna() & (frame["score"].astype(float) < below)
    return frame[keep]


def runs_with_task(store: Store, task: str) -> pd.DataFrame:
    """Runs holding a finished result for `task`: the candidates for a comparison."""
    runs = runs_frame(store)
    with store.session() as session:
        ids = set(session.scalars(select(TaskResult.run_id).where(TaskResult.task == task,
                                                                  TaskResult.status == "done")))
    return runs[runs["run_id"].isin(ids)].reset_index(drop=True)


def compared_tasks(store: Store) -> list[str]:
    """Tasks with finished results in at least two runs."""
    with store.session() as session:
        rows = session.execute(select(TaskResult.task, TaskResult.run_id).where(TaskResult.status == "done")).all()
    counts: dict[str, set[int]] = {}
    for task, run_id in rows:
        counts.setdefault(task, set()).add(run_id)
    return sorted(t for t, runs in counts.items() if len(runs) >= 2)


def paired_items(store: Store, run_a: int, run_b: int, task: str) -> pd.DataFrame:
    """Two runs on one task, item by item (joined on doc_id): both outputs, both scores (0-100) and A - B.

    attrs["warnings"] lists reasons the pairing may not be like for like (different data hashes or item ids,
    items only one run has); attrs["basis"] is the per-sample metric compared.
    """
    a, b = samples_frame(store, run_a, task), samples_frame(store, run_b, task)
    with store.session() as session:
        hash_a, hash_b = (_task_result(session, run_a, task).data_hash, _task_result(session, run_b, task).data_hash)
    keep = ["doc_id", "item_id", "target", "output", "extracted", "score"]
    merged = a[keep].merge(b[keep], on="doc_id", suffixes=("_a", "_b"), how="inner")
    warnings = []
    if hash_a and hash_b and hash_a != hash_b:
        warnings.append(f"the runs used different data for {task} (hash {hash_a[:12]} vs {hash_b[:12]}): "
                        "items with the same doc_id may differ")
    mismatched = merged[(merged["item_id_a"].fillna("") != merged["item_id_b"].fillna(""))]
    if len(mismatched):
        warnings.append(f"{len(mismatched)} paired items have different item ids")
    unpaired = len(a) + len(b) - 2 * len(merged)
    if unpaired:
        warnings.append(f"{unpaired} items are in only one of the runs and are left out")
    merged = merged.rename(columns={"item_id_a": "item_id", "target_a": "target"}).drop(columns=["item_id_b",
                                                                                                  "target_b"])
    merged["diff"] = merged["score_a"] - merged["score_b"]
    frame = merged[["doc_id", "item_id", "score_a", "score_b", "diff", "output_a", "output_b", "extracted_a",
                    "extracted_b", "target"]].reset_index(drop=True)
    frame.attrs["warnings"] = warnings
    frame.attrs["basis"] = a.attrs["basis"]
    return frame


@dataclass(frozen=True)
class Comparison:
    """Run A vs run B on the same items, on the 0-100 scale."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    p_value: float
    test: str
    a_only: int | None = None
    b_only: int | None = None


def compare(paired: pd.DataFrame, n_resamples: int = stats.N_RESAMPLES, seed: int = 0) -> Comparison:
    """Paired bootstrap interval of the mean score difference A - B, and the p-value of "no difference": McNemar's
    exact test when every per-item score is right/wrong, a paired sign-flip permutation test otherwise."""
    both = paired.dropna(subset=["score_a", "score_b"])
    if both.empty:
        raise KobenchError("no items with a score in both runs: nothing to compare")
    scale = paired.attrs["basis"].scale if "basis" in paired.attrs else 100.0
    a = both["score_a"].to_numpy(dtype=float) / scale
    b = both["score_b"].to_numpy(dtype=float) / scale
    boot = stats.paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed)
    if stats.is_binary(a) and stats.is_binary(b):
        test = stats.mcnemar(a, b)
        p_value, name, a_only, b_only = test.p_value, "McNemar exact (binomial)", test.a_only, test.b_only
    else:
        p_value, name, a_only, b_only = boot.p_value, boot.test, None, None
    return Comparison(boot.n, boot.mean_a * scale, boot.mean_b * scale, boot.diff * scale, boot.low * scale,
                      boot.high * scale, p_value, name, a_only, b_only)
