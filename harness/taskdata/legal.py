"""Korean civil-law data: open questions (ko_legal_qa, CSV) and four-choice questions (ko_legal_mcq, JSONL).

Both carry a `category` (전세사기, 부동산물권, 계약, 불법행위, 상속, 채권 in the shipped data; a user file may use its own)
and a `difficulty` (초급/중급/고급), which the tasks report scores by.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.taskdata import check_unique_ids, read_csv_rows, read_json_records, reader

QA_REQUIRED = ["question", "answer", "category", "difficulty"]
QA_OPTIONAL = ["key_terms", "id"]
QA_EXPECTED = ("columns question, answer, category, difficulty (required) and key_terms (';'-separated terms the "
               "answer should name), id (optional)")
KEY_TERM_SEPARATOR = ";"

LETTERS = "ABCD"
MCQ_SCHEMA = ('one JSON object per line: {"id", "question", "choices": [4 strings], "answer": 0-3 or "A"-"D", '
              '"category", "difficulty", "explanation" (optional)}')


def split_key_terms(value: str) -> list[str]:
    """'대항력; 확정일자;' -> ['대항력', '확정일자']: empty pieces dropped."""
    return [term.strip() for term in (value or "").split(KEY_TERM_SEPARATOR) if term.strip()]


@reader("ko_legal_qa")
def read_legal_qa(path: Path) -> list[dict[str, Any]]:
    rows = read_csv_rows(path, required=QA_REQUIRED, optional=QA_OPTIONAL, expected=QA_EXPECTED)
    docs = []
    for index, (where, row) in enumerate(rows, start=1):
        item_id = row.get("id") or f"row_{index:04d}"
        label = f"{where} (id {item_id})"
        for column in QA_REQUIRED:
            if not row[column]:
                what = "so the item cannot be scored" if column == "answer" else "every row needs one"
                raise DataError(path, label, f"empty '{column}', {what}", QA_EXPECTED)
        docs.append({"id": item_id, "question": row["question"], "answer": row["answer"],
                     "category": row["category"], "difficulty": row["difficulty"],
                     "key_terms": split_key_terms(row.get("key_terms", ""))})
    check_unique_ids(path, [(where, doc["id"]) for (where, _), doc in zip(rows, docs)])
    return docs


def parse_answer(value: Any) -> int | None:
    """The gold choice as an index: 0-3, or a letter A-D (either case); None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < len(LETTERS) else None
    letter = value.strip().upper() if isinstance(value, str) else ""
    return LETTERS.index(letter) if len(letter) == 1 and letter in LETTERS else None


@reader("ko_legal_mcq")
def read_legal_mcq(path: Path) -> list[dict[str, Any]]:
    records = read_json_records(path)
    docs = []
    for where, item in records:
        item_id = str(item.get("id") or "")
        if not item_id:
            raise DataError(path, where, "item has no 'id'", MCQ_SCHEMA)
        label = f"{where} (id {item_id})"
        for key in ("question", "category", "difficulty"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise DataError(path, label, f"missing or empty '{key}'", MCQ_SCHEMA)
        choices = item.get("choices")
        if not isinstance(choices, list) or len(choices) != len(LETTERS):
            count = len(choices) if isinstance(choices, list) else type(choices).__name__
            raise DataError(path, label, f"'choices' must be a list of 4 options, got {count}", MCQ_SCHEMA)
        if not all(isinstance(c, str) and c.strip() for c in choices):
            raise DataError(path, label, "every choice must be a non-empty string", MCQ_SCHEMA)
        answer = parse_answer(item.get("answer"))
        if answer is None:
            raise DataError(path, label, f"'answer' {item.get('answer')!r} is not a choice",
                            "0, 1, 2 or 3 (the index of the correct choice) or a letter A-D")
        docs.append({"id": item_id, "question": item["question"].strip(), "choices": [c.strip() for c in choices],
                     "label": answer, "category": item["category"].strip(), "difficulty": item["difficulty"].strip(),
                     "explanation": str(item.get("explanation") or "")})
    check_unique_ids(path, [(where, doc["id"]) for (where, _), doc in zip(records, docs)])
    return docs
