"""Task data: readers for each task's documented file format, and the lm-eval `custom_dataset` loader.

A reader turns one file into a list of documents, or raises DataError naming the file, the line or item id, and the
fix. The same reader validates a user's `--data TASK=FILE` before anything runs and loads it inside lm-eval.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import DataError

Reader = Callable[[Path], list[dict[str, Any]]]
Refiner = Callable[[dict[str, Any]], dict[str, Any]]
READERS: dict[str, Reader] = {}
REFINERS: dict[str, Refiner] = {}
ENCODINGS = ("utf-8-sig", "cp949")


def reader(fmt: str) -> Callable[[Reader], Reader]:
    """Register a reader for a data format name used in task YAMLs (`metadata.kobench.format`)."""

    def wrap(func: Reader) -> Reader:
        READERS[fmt] = func
        return func

    return wrap


def refiner(fmt: str) -> Callable[[Refiner], Refiner]:
    """Register the `--refined` preprocessing of a data format: one document in, its cleaned copy out.

    Formats without a refiner load unchanged under `--refined`.
    """

    def wrap(func: Refiner) -> Refiner:
        REFINERS[fmt] = func
        return func

    return wrap


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, None, "no such file", "an existing file path")
    if path.is_dir():
        raise DataError(path, None, "is a directory", "a data file")
    if path.stat().st_size == 0:
        raise DataError(path, None, "the file is empty", "at least one item")


def read_text(path: Path) -> str:
    """File text as UTF-8 (with or without BOM) or CP949, the encodings Korean data files come in."""
    _check_file(path)
    raw = path.read_bytes()
    for encoding in ENCODINGS:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DataError(path, None, "not UTF-8 or CP949 text", "a UTF-8 (or CP949) encoded file")


def read_json_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """A JSON list or JSONL file as (location, object) pairs; location is 'line N' or 'item N' for messages."""
    text = read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise DataError(path, None, "the file has no items", "a JSON list or one JSON object per line")
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"line {exc.lineno}", f"invalid JSON ({exc.msg})", "a JSON list of objects") from None
        records = [(f"item {i + 1}", item) for i, item in enumerate(items)]
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(path, f"line {lineno}", f"invalid JSON ({exc.msg} at column {exc.colno})",
                                "one JSON object per line (JSONL)") from None
    for where, item in records:
        if not isinstance(item, dict):
            raise DataError(path, where, f"expected a JSON object, got {type(item).__name__}")
    if not records:
        raise DataError(path, None, "the file has no items", "a JSON list or one JSON object per line")
    return records


def read_csv_rows(path: Path, required: list[str], optional: list[str] | None = None,
                  expected: str | None = None) -> list[tuple[str, dict[str, str]]]:
    """CSV rows as (location, row) pairs, checking the header names the required columns."""
    text = read_text(path)
    rows = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in (rows.fieldnames or [])]
    expected = expected or ", ".join(required + (optional or []))
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(path, "header", f"missing column(s) {', '.join(missing)} (columns: {', '.join(columns) or 'none'})",
                        expected)
    out = []
    for row in rows:
        # csv counts physical lines; report the line where the record ends
        where = f"line {rows.line_num}"
        if None in row:
            raise DataError(path, where, f"{len(columns) + len(row[None])} fields but the header has {len(columns)}",
                            expected)
        clean = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        out.append((where, clean))
    if not out:
        raise DataError(path, None, "the file has a header but no rows", expected)
    return out


def check_unique_ids(path: Path, records: list[tuple[str, str]]) -> None:
    """records: (location, id) pairs; duplicate ids are an error naming both places."""
    seen: dict[str, str] = {}
    for where, item_id in records:
        if item_id in seen:
            raise DataError(path, where, f"duplicate id '{item_id}' (first at {seen[item_id]})", "unique ids")
        seen[item_id] = where


def read_records(path: Path, fmt: str) -> list[dict[str, Any]]:
    _register_all()
    if fmt not in READERS:
        raise KeyError(f"no reader registered for data format {fmt!r}")
    return READERS[fmt](Path(path))


def _register_all() -> None:
    # Importing the task modules registers their readers.
    from harness.taskdata import formats  # noqa: F401


def load_splits(task_name: str, **metadata: Any) -> Any:
    """lm-eval `custom_dataset` entry point: the task's splits as a datasets.DatasetDict.

    `metadata` is what lm-eval passes: the task's own metadata plus kobench's run metadata (`kobench_data`:
    {task: path} replacing the eval split; `kobench_categories`: {task: [categories]} filtering it;
    `kobench_refined`: apply the format's registered refiner to every split).
    """
    import datasets

    from harness.tasks import get_task

    info = get_task(task_name)
    override = (metadata.get("kobench_data") or {}).get(task_name)
    categories = (metadata.get("kobench_categories") or {}).get(task_name)
    splits = {}
    for split in info.splits:
        path = Path(override) if (override and split == info.eval_split) else info.split_path(split)
        docs = read_records(path, info.data_format)
        refine = REFINERS.get(info.data_format or "") if metadata.get("kobench_refined") else None
        if refine is not None:
            docs = [refine(doc) for doc in docs]
        if categories and split == info.eval_split:
            docs = [d for d in docs if d.get("category") in set(categories)]
        splits[split] = datasets.Dataset.from_list(docs)
    return datasets.DatasetDict(splits)


def task_loader(task_name: str) -> Callable[..., Any]:
    """What a task's utils.py exposes as `load` for its YAML's `custom_dataset: !function utils.load`."""

    def load(**metadata: Any) -> Any:
        return load_splits(task_name, **metadata)

    return load
