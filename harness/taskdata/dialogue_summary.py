"""ko_dialogue_summary data: the 일상 대화 요약 competition CSV (fname, dialogue, summary, topic).

The dialogue holds one turn per line (`#Person1#: ...`) with masks such as #PhoneNumber#. `summary` is the
reference the output is scored against; optional `summary2`/`summary3` columns add references (ROUGE takes the best).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.taskdata import check_unique_ids, read_csv_rows, reader

REFERENCE_COLUMNS = ("summary", "summary2", "summary3")
EXPECTED = ("columns fname, dialogue, summary, topic as in the competition CSV: dialogue and summary (the reference "
            "the output is scored against) are required; fname, topic, summary2, summary3 are optional")


@reader("ko_dialogue_summary")
def read_dialogue_summary(path: Path) -> list[dict[str, Any]]:
    rows = read_csv_rows(path, required=["dialogue", "summary"], optional=["fname", "topic", "summary2", "summary3"],
                         expected=EXPECTED)
    docs = []
    for index, (where, row) in enumerate(rows, start=1):
        item_id = row.get("fname") or f"row_{index:04d}"
        label = f"{where} (fname {item_id})"
        # CRLF files keep '\r' inside quoted fields; turns are split on '\n' only.
        dialogue = "\n".join(line.strip() for line in row["dialogue"].replace("\r\n", "\n").split("\n") if line.strip())
        if not dialogue:
            raise DataError(path, label, "empty 'dialogue'", "the conversation, one '#PersonN#: ...' turn per line")
        if not row["summary"]:
            raise DataError(path, label, "empty 'summary', so the item cannot be scored",
                            "a reference summary in every row")
        references = [" ".join(row[c].split()) for c in REFERENCE_COLUMNS if row.get(c)]
        docs.append({"id": item_id, "dialogue": dialogue, "references": references, "topic": row.get("topic") or None})
    check_unique_ids(path, [(where, doc["id"]) for (where, _), doc in zip(rows, docs)])
    return docs
