"""Hard-voting ensembles over stored runs: each finished run's per-sample answers vote, the majority answer wins.

An ensemble is stored like any evaluated model (a model row of kind `ensemble`, a run of kind `ensemble` with a task
result, scores and samples), so the ranking lists it beside its members. Nothing is re-run: the votes are the
answers the members' runs already stored (`samples.output` = chosen index for multiple-choice tasks; the extracted
letter for generative lettered tasks such as ko_context_inference_gen).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from harness.errors import KobenchError
from harness.store import open_store
from harness.store import records
from harness.store.db import Store
from harness.store.schema import Model, Run, Sample, TaskResult
from harness.tasks import TaskInfo, get_task

NO_ANSWER = "[invalid]"  # lm-eval's fallback for an answer the filter could not extract
TIE_BREAK = "best individual accuracy on these items, then the lowest run id"


@dataclass
class Member:
    """One voting run: its answer (choice index, None when it gave no valid answer) for every item."""

    run_id: int
    model_id: int
    model: str
    hardware: str
    task_version: str | None
    data_hash: str | None
    answers: dict[int, int | None]
    gold: dict[int, int]
    item_ids: dict[int, str | None] = field(default_factory=dict)
    prompts: dict[int, str] = field(default_factory=dict)
    categories: dict[int, str] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return sum(self.answers[d] == self.gold[d] for d in self.gold) / len(self.gold) if self.gold else 0.0

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "model_id": self.model_id, "model": self.model, "hardware": self.hardware,
                "accuracy": self.accuracy}


@dataclass
class EnsembleResult:
    run_id: int
    model_id: int
    model: str
    task: str
    hardware: str
    n: int
    scores: dict[str, float]
    members: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "model_id": self.model_id, "model": self.model, "task": self.task,
                "hardware": self.hardware, "n": self.n, "scores": self.scores, "members": self.members}


def vote(answers: list[int | None], tie_order: list[int]) -> int | None:
    """The majority answer of `answers` (one per member, None = no vote).

    A tie goes to the first member in `tie_order` (member positions, best first) whose answer is among the tied ones.
    Returns None when no member gave a valid answer.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    tied = {answer for answer, count in counts.items() if count == top}
    if len(tied) == 1:
        return tied.pop()
    return next(answers[i] for i in tie_order if answers[i] in tied)


def tie_order(members: list[Member]) -> list[int]:
    """Member positions by individual accuracy, best first; equal accuracy goes to the lower run id.

    Nothing depends on the order of --runs, so the same runs always make the same ensemble.
    """
    return sorted(range(len(members)), key=lambda i: (-members[i].accuracy, members[i].run_id))


def ensemble_identity(run_ids: list[int]) -> str:
    """The ensemble's model identity: the same member runs (in any order) are the same ensemble."""
    key = "ensemble\x1f" + ",".join(str(r) for r in sorted(run_ids))
    return hashlib.sha256(key.encode()).hexdigest()


def _choice_answer(info: TaskInfo, sample: Sample) -> int | None:
    """A stored answer as a choice index: the index itself (multiple choice) or the letter A, B, C, ... (generative)."""
    if info.output_type == "multiple_choice":
        return int(sample.output) if sample.output.strip().lstrip("-").isdigit() else None
    # the runner keeps the filtered answer in `_extracted` only where it differs from the raw generation
    letter = str((sample.metrics or {}).get("_extracted", sample.output)).strip()
    return ord(letter) - ord("A") if len(letter) == 1 and "A" <= letter <= "Z" else None


def _gold(info: TaskInfo, sample: Sample, run_id: int) -> int:
    target = sample.target.strip()
    if info.output_type == "multiple_choice" and target.isdigit():
        return int(target)
    if info.output_type != "multiple_choice" and len(target) == 1 and "A" <= target <= "Z":
        return ord(target) - ord("A")
    raise KobenchError(f"--task {info.name}: run {run_id} stored the target {target[:40]!r} for doc {sample.doc_id}, "
                       "not a choice; ensembles vote over choices (multiple-choice or lettered tasks only)")


def load_member(store: Store, run_id: int, info: TaskInfo) -> Member:
    """A finished run's answers on `info`'s items, or a one-line error saying why the run cannot vote."""
    with store.session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise KobenchError(f"--runs: run {run_id} is not in {store.display_url} (see `kobench show --json` or "
                               "`kobench export --format json` for run ids)")
        if run.status != "done":
            raise KobenchError(f"--runs: run {run_id} is {run.status}, not done: only finished runs can vote")
        if run.kind == "ensemble":
            raise KobenchError(f"--runs: run {run_id} is itself an ensemble; vote over the runs of single models")
        result = session.scalar(select(TaskResult).where(TaskResult.run_id == run_id, TaskResult.task == info.name))
        if result is None or result.status != "done":
            have = sorted(r.task for r in run.task_results if r.status == "done")
            raise KobenchError(f"--runs: run {run_id} has no finished {info.name} result (it has: "
                               f"{', '.join(have) or 'none'}). Run that task first or pick other runs")
        model = session.get(Model, run.model_id)
        samples = session.scalars(select(Sample).where(Sample.task_result_id == (result.reused_from_id or result.id))
                                  .order_by(Sample.doc_id)).all()
        if not samples:
            raise KobenchError(f"--runs: run {run_id} stored no samples for {info.name}, so it has no answers to vote")
        breakdown = info.breakdown[0] if info.breakdown else None
        return Member(
            run_id=run_id, model_id=model.id, model=model.name, hardware=run.hardware,
            task_version=result.task_version, data_hash=result.data_hash,
            answers={s.doc_id: _choice_answer(info, s) for s in samples},
            gold={s.doc_id: _gold(info, s, run_id) for s in samples},
            item_ids={s.doc_id: s.item_id for s in samples}, prompts={s.doc_id: s.prompt for s in samples},
            categories={s.doc_id: str((s.metrics or {}).get(f"_{breakdown}")) for s in samples
                        if breakdown and (s.metrics or {}).get(f"_{breakdown}") is not None})


def check_same_items(members: list[Member], task: str) -> None:
    """Members must have answered the same items of the same data: same data hash, same doc ids, same gold."""
    first = members[0]
    for other in members[1:]:
        pair = f"runs {first.run_id} and {other.run_id}"
        if other.data_hash != first.data_hash:
            raise KobenchError(f"--runs: {pair} scored different {task} data (data hash {str(first.data_hash)[:12]} vs "
                               f"{str(other.data_hash)[:12]}); an ensemble needs runs on the same data file")
        if set(other.gold) != set(first.gold):
            only_first = sorted(set(first.gold) - set(other.gold))
            only_other = sorted(set(other.gold) - set(first.gold))
            example = (f"doc {only_first[0]} only in run {first.run_id}" if only_first
                       else f"doc {only_other[0]} only in run {other.run_id}")
            raise KobenchError(f"--runs: {pair} scored different {task} items ({len(first.gold)} vs "
                               f"{len(other.gold)} items, e.g. {example}); rerun them with the same --limit and "
                               "--categories")
        differing = [d for d in first.gold if first.gold[d] != other.gold[d]]
        if differing:
            raise KobenchError(f"--runs: {pair} disagree on the gold answer of {task} doc {differing[0]}; "
                               "their data differs, so they cannot vote together")


def _mean_stderr(values: list[float]) -> float | None:
    """Standard error of a mean, as lm-eval computes it (sample standard deviation / sqrt(n))."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(variance / len(values))


def build_outcome(info: TaskInfo, members: list[Member], fingerprint: str) -> records.TaskOutcome:
    """Vote on every item and turn the result into what the store keeps for a task (scores + samples)."""
    order = tie_order(members)
    first = members[0]
    breakdown = info.breakdown[0] if info.breakdown else None
    # the task's main metric (exact_match,letter for the generative variant) is what the ranking reads
    metric_names = list(dict.fromkeys(["acc", info.main_metric]))
    samples, correct = [], []
    by_group: dict[str, list[float]] = defaultdict(list)
    for doc_id in sorted(first.gold):
        answers = [m.answers[doc_id] for m in members]
        winner = vote(answers, order)
        hit = float(winner is not None and winner == first.gold[doc_id])
        correct.append(hit)
        metrics: dict[str, Any] = {name: hit for name in metric_names}
        metrics["votes"] = answers
        group = first.categories.get(doc_id)
        if breakdown and group is not None:
            metrics[f"_{breakdown}"] = group
            by_group[group].append(hit)
        samples.append({"doc_id": doc_id, "item_id": first.item_ids.get(doc_id), "prompt": first.prompts[doc_id],
                        "output": NO_ANSWER if winner is None else str(winner), "target": str(first.gold[doc_id]),
                        "metrics": metrics})
    n = len(correct)
    scores = [{"metric": name, "value": sum(correct) / n, "stderr": _mean_stderr(correct), "n": n}
              for name in metric_names]
    for group, hits in sorted(by_group.items()):
        scores += [{"metric": f"{name}[{breakdown}={group}]", "value": sum(hits) / len(hits), "stderr": None,
                    "n": len(hits)} for name in metric_names]
    return records.TaskOutcome(
        task=info.name, task_version=first.task_version, data_hash=first.data_hash, fingerprint=fingerprint, n=n,
        scores=scores, samples=samples,
        details={"members": [m.summary() for m in members], "tie_break": TIE_BREAK,
                 "votes": "per sample, members' answers in the order of details.members (null = no valid answer)"})


def parse_run_ids(value: str) -> list[int]:
    """`--runs 3,5,8` as run ids: at least two, no repeats."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    try:
        run_ids = [int(p) for p in parts]
    except ValueError:
        raise KobenchError(f"--runs {value}: expected comma-separated run ids, e.g. --runs 3,5,8") from None
    if len(run_ids) < 2:
        raise KobenchError(f"--runs {value}: an ensemble needs at least two runs, e.g. --runs 3,5,8")
    repeated = sorted({r for r in run_ids if run_ids.count(r) > 1})
    if repeated:
        raise KobenchError(f"--runs {value}: run {repeated[0]} is listed twice; each run votes once")
    return run_ids


def create_ensemble(run_ids: list[int], task: str, db: str | None = None) -> EnsembleResult:
    """Vote the stored answers of `run_ids` on `task` and store the ensemble as a model, run, result and samples.

    Every check happens on a read-only handle first, so a refused ensemble leaves the store untouched.
    """
    from harness.runner import environment_versions

    info = get_task(task)
    start = time.perf_counter()
    reader = open_store(db, readonly=True)
    try:
        members = [load_member(reader, run_id, info) for run_id in run_ids]
    finally:
        reader.dispose()
    check_same_items(members, task)
    hardware = members[0].hardware if len({m.hardware for m in members}) == 1 else "mixed"
    names = ", ".join(f"{m.model}#{m.run_id}" for m in members)
    name = f"ensemble({names})"
    fingerprint = hashlib.sha256(json.dumps({"kind": "ensemble", "task": task, "runs": sorted(run_ids),
                                             "data": members[0].data_hash}).encode()).hexdigest()
    outcome = build_outcome(info, members, fingerprint)

    store = open_store(db)
    try:
        model_id = records.get_or_create_model(
            store, ensemble_identity(run_ids), kind="ensemble", name=name,
            source="ensemble:runs=" + ",".join(str(r) for r in sorted(run_ids)),
            details={"members": [{"run_id": m.run_id, "model_id": m.model_id, "model": m.model} for m in members],
                     "method": "hard voting", "tie_break": TIE_BREAK})
        run_id = records.create_run(
            store, model_id, kind="ensemble", hardware=hardware,
            config={"runs": run_ids, "task": task, "method": "hard voting", "tie_break": TIE_BREAK},
            versions=environment_versions(), task_versions={task: outcome.task_version},
            data_hashes={task: outcome.data_hash})
        try:
            outcome.wall_s = time.perf_counter() - start
            records.write_task(store, run_id, outcome)
        except BaseException as exc:
            records.finish_run(store, run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        records.finish_run(store, run_id, "done", wall_s=time.perf_counter() - start)
    finally:
        store.dispose()
    return EnsembleResult(run_id=run_id, model_id=model_id, model=name, task=task, hardware=hardware, n=outcome.n or 0,
                          scores={s["metric"]: s["value"] for s in outcome.scores},
                          members=outcome.details["members"])
