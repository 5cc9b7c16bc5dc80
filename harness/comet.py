"""COMET for stored ko_md_translation runs, computed in a separate virtual environment.

unbabel-comet pins transformers<5, huggingface-hub<1 and numpy<2, which kobench's own environment cannot satisfy, so
COMET lives in its own venv (KOBENCH_COMET_VENV, default <kobench cache>/comet-venv) made by `kobench comet setup`.
Scoring reads a run's stored samples (source from the prompt, the output, the reference), has harness/comet_worker.py
score them inside that venv, and writes a `comet` score row plus per-sample `comet` values in one transaction. When
the venv or the model is missing, the result is "not computed" with the reason, and nothing is written.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import KobenchError
from harness.paths import cache_dir

TASK = "ko_md_translation"
DEFAULT_MODEL = "Unbabel/wmt22-comet-da"
COMET_PACKAGE = "unbabel-comet"
CPU_TORCH = "torch==2.13.0"  # the CPU wheel kobench's Makefile installs; keeps pip from pulling a CUDA build
# unbabel-comet's torchmetrics<0.11 imports pkg_resources, which setuptools 81 removed
SETUPTOOLS = "setuptools<81"
WORKER = Path(__file__).resolve().parent / "comet_worker.py"


def comet_venv() -> Path:
    """Where the COMET venv lives: KOBENCH_COMET_VENV, else <kobench cache>/comet-venv."""
    configured = os.environ.get("KOBENCH_COMET_VENV")
    return Path(configured).expanduser() if configured else cache_dir() / "comet-venv"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_problem(venv: Path) -> str | None:
    """Why the COMET venv cannot score (None when it can)."""
    python = venv_python(venv)
    if not python.exists():
        return f"no COMET environment at {venv}; create it with `kobench comet setup`"
    check = subprocess.run([str(python), "-I", "-c", "import comet"], capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["import failed"])[-1]
        return f"the COMET environment at {venv} cannot import comet ({last}); recreate it with " \
               "`kobench comet setup --force`"
    return None


def _run_step(cmd: list[str], what: str, log: Callable[[str], None]) -> None:
    log(what)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-3:] if line.strip())
        raise KobenchError(f"comet setup: {what} failed (exit {proc.returncode}): {tail[:400]}")


def setup_venv(venv: Path | None = None, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Create the COMET venv: python -m venv, the CPU torch wheel when the base Python has no torch, unbabel-comet.

    A torch already in the base interpreter (e.g. a CUDA build) is reused through --system-site-packages, as kobench's
    Makefile does for its own venv.
    """
    import shutil

    venv = venv or comet_venv()
    if venv_python(venv).exists() and not force and venv_problem(venv) is None:
        log(f"COMET environment already set up at {venv}")
        return venv
    if venv.exists():
        shutil.rmtree(venv)
    base = getattr(sys, "_base_executable", None) or sys.executable
    base_has_torch = subprocess.run([base, "-c", "import torch"], capture_output=True).returncode == 0
    cmd = [sys.executable, "-m", "venv", *(["--system-site-packages"] if base_has_torch else []), str(venv)]
    _run_step(cmd, f"creating {venv}", log)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "-q"]
    if not base_has_torch:
        _run_step([*pip, CPU_TORCH], f"installing {CPU_TORCH} (CPU)", log)
    _run_step([*pip, COMET_PACKAGE, SETUPTOOLS], f"installing {COMET_PACKAGE}", log)
    problem = venv_problem(venv)
    if problem:
        raise KobenchError(f"comet setup: {problem}")
    log(f"COMET environment ready at {venv}")
    return venv


@dataclass
class CometResult:
    """A run's COMET score, or why it was not computed."""

    run_id: int
    task: str
    model: str
    status: str  # "ok" | "not_computed"
    reason: str | None = None
    system_score: float | None = None
    n: int = 0
    scores: dict[str, float] = field(default_factory=dict)  # item_id (or doc id) -> segment score

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _stored_samples(store: Any, run_id: int) -> tuple[int, list[Any]]:
    """(task_result id of the run's ko_md_translation, its stored samples) — samples of a reused result included."""
    from sqlalchemy import select

    from harness.store import records
    from harness.store.schema import Run, Sample, TaskResult

    with store.session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise KobenchError(f"--run {run_id}: no such run in {store.display_url} (see `kobench show --json`)")
        result = session.scalar(select(TaskResult).where(TaskResult.run_id == run_id, TaskResult.task == TASK))
        if result is None or result.status != "done":
            tasks = ", ".join(sorted(r.task for r in run.task_results)) or "none"
            raise KobenchError(f"--run {run_id}: has no finished {TASK} result (its tasks: {tasks}). "
                               f"Run `kobench run --tasks {TASK}` first")
    source_id = records.sample_source_id(store, result.id)
    with store.session() as session:
        samples = session.scalars(select(Sample).where(Sample.task_result_id == source_id)
                                  .order_by(Sample.doc_id)).all()
    if not samples:
        raise KobenchError(f"--run {run_id}: its {TASK} result has no stored samples to score")
    return result.id, list(samples)


def _sources(store: Any, run_id: int, samples: list[Any]) -> list[str]:
    """Each sample's source: from the ### frame of its stored prompt, else (a chat prompt holds the bare source
    inside the model's template) from the run's data file by item id, checked against the stored reference."""
    from harness.store.schema import Run
    from harness.taskdata.md_translation import read_md_translation, source_from_prompt
    from harness.tasks import get_task

    sources = [source_from_prompt(s.prompt) for s in samples]
    if all(source is not None for source in sources):
        return sources
    with store.session() as session:
        run = session.get(Run, run_id)
        override = (run.config or {}).get("data", {}).get(TASK)
    info = get_task(TASK)
    path = Path(override) if override else info.split_path(info.eval_split)
    docs = {d["id"]: d for d in read_md_translation(path)} if path and path.exists() else {}
    for i, sample in enumerate(samples):
        if sources[i] is not None:
            continue
        doc = docs.get(sample.item_id or "")
        if doc is None or doc["reference"] != sample.target:
            raise KobenchError(f"--run {run_id}: the source of item {sample.item_id or sample.doc_id} is neither in "
                               f"its stored prompt nor unchanged in {path}, so COMET has no source to score against")
        sources[i] = doc["source"]
    return sources


def score_run(store: Any, run_id: int, model: str = DEFAULT_MODEL, venv: Path | None = None, batch_size: int = 8,
              gpus: int = 0) -> CometResult:
    """Score a stored ko_md_translation run with COMET and store it, or return why it was not computed."""
    from harness.taskdata.md_translation import clean_translation

    venv = venv or comet_venv()
    task_result_id, samples = _stored_samples(store, run_id)
    sources = _sources(store, run_id, samples)
    request_samples = [{"src": source, "mt": clean_translation(sample.output), "ref": sample.target}
                       for source, sample in zip(sources, samples)]
    result = CometResult(run_id=run_id, task=TASK, model=model, status="not_computed", n=len(samples))
    problem = venv_problem(venv)
    if problem:
        result.reason = problem
        return result
    reply = _run_worker(venv, {"model": model, "samples": request_samples, "batch_size": batch_size, "gpus": gpus})
    if reply["status"] != "ok":
        result.reason = reply.get("reason") or "the COMET worker gave no reason"
        return result
    scores = reply["scores"]
    if len(scores) != len(samples):
        raise KobenchError(f"COMET returned {len(scores)} scores for {len(samples)} samples")
    result.status, result.system_score = "ok", reply["system_score"]
    result.scores = {str(s.item_id or s.doc_id): v for s, v in zip(samples, scores)}
    _store_scores(store, run_id, task_result_id, samples, scores, result.system_score,
                  {"model": model, "checkpoint": reply.get("checkpoint"), "n": len(samples)})
    return result


def _run_worker(venv: Path, request: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kobench-comet-") as tmp:
        in_path, out_path = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_path.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
        # -I: without the script's folder on sys.path, where harness/comet.py would shadow the comet package
        proc = subprocess.run([str(venv_python(venv)), "-I", str(WORKER), str(in_path), str(out_path)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not out_path.exists():
            tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-3:] if line.strip())
            raise KobenchError(f"COMET scoring failed in {venv} (exit {proc.returncode}): {tail[:500]}")
        return json.loads(out_path.read_text(encoding="utf-8"))


def _store_scores(store: Any, run_id: int, task_result_id: int, samples: list[Any], scores: list[float],
                  system_score: float, details: dict[str, Any]) -> None:
    """One transaction: replace the result's comet score rows (overall + per style), set each sample's comet."""
    from sqlalchemy import delete, or_

    from harness.store.schema import Sample, Score, TaskResult

    by_style: dict[str, list[float]] = defaultdict(list)
    with store.session() as session, session.begin():
        session.execute(delete(Score).where(Score.task_result_id == task_result_id,
                                            or_(Score.metric == "comet", Score.metric.like("comet[%"))))
        session.add(Score(run_id=run_id, task_result_id=task_result_id, task=TASK, metric="comet",
                          value=system_score, stderr=None, n=len(scores)))
        for stored, value in zip(samples, scores):
            sample = session.get(Sample, stored.id)
            sample.metrics = {**(sample.metrics or {}), "comet": value}  # a new dict, so the JSON column is saved
            style = sample.metrics.get("_style")
            if style is not None:
                by_style[str(style)].append(value)
        for style, values in sorted(by_style.items()):
            session.add(Score(run_id=run_id, task_result_id=task_result_id, task=TASK, metric=f"comet[style={style}]",
                              value=sum(values) / len(values), stderr=None, n=len(values)))
        result = session.get(TaskResult, task_result_id)
        result.details = {**(result.details or {}), "comet": details}
