"""A plain JSONL/JSON-list format for fixture and user-defined tasks: records are used as they are."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.taskdata import read_json_records, reader


@reader("jsonl")
def read_generic(path: Path) -> list[dict[str, Any]]:
    return [record for _, record in read_json_records(path)]
