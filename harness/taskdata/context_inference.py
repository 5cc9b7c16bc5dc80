"""ko_context_inference data: the public JSON schema of the 대화 맥락 추론 task (JSON list or JSONL)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.taskdata import check_unique_ids, read_json_records, reader

CATEGORIES = ("원인", "후행사건", "전제", "동기", "반응")
ANSWERS = ("inference_1", "inference_2", "inference_3")
SCHEMA = ('{"id", "input": {"conversation": [{"speaker", "utterance", "utterance_id"}], "reference_id": [ids], '
          '"category", "inference_1", "inference_2", "inference_3"}, "output": "inference_N"}')


@reader("ko_context_inference")
def read_context_inference(path: Path) -> list[dict[str, Any]]:
    docs = []
    records = read_json_records(path)
    for where, item in records:
        item_id = str(item.get("id", ""))
        label = f"{where} (id {item_id})" if item_id else where
        if not item_id:
            raise DataError(path, where, "item has no 'id'", SCHEMA)
        inp = item.get("input")
        if not isinstance(inp, dict):
            raise DataError(path, label, "missing 'input' object", SCHEMA)
        conversation = inp.get("conversation")
        if not isinstance(conversation, list) or not conversation:
            raise DataError(path, label, "'input.conversation' must be a non-empty list", SCHEMA)
        turns = []
        for turn in conversation:
            if not isinstance(turn, dict) or not {"speaker", "utterance", "utterance_id"} <= set(turn):
                raise DataError(path, label, f"conversation turn {turn!r:.80} lacks speaker/utterance/utterance_id",
                                SCHEMA)
            turns.append({"speaker": int(turn["speaker"]), "utterance": str(turn["utterance"]),
                          "utterance_id": str(turn["utterance_id"])})
        category = inp.get("category")
        if category not in CATEGORIES:
            raise DataError(path, label, f"unknown category {category!r}", f"one of {' | '.join(CATEGORIES)}")
        reference_ids = inp.get("reference_id")
        if isinstance(reference_ids, str):
            reference_ids = [reference_ids]
        if not reference_ids:
            raise DataError(path, label, "'input.reference_id' is empty", "a list of utterance ids")
        known = {t["utterance_id"] for t in turns}
        for ref in reference_ids:
            if ref not in known:
                raise DataError(path, label, f"reference_id {ref!r} is not an utterance_id of the conversation",
                                "ids from input.conversation[].utterance_id")
        options = []
        for key in ANSWERS:
            if not isinstance(inp.get(key), str) or not inp[key].strip():
                raise DataError(path, label, f"missing '{key}'", SCHEMA)
            options.append(inp[key].strip())
        output = item.get("output")
        if output is not None and output not in ANSWERS:
            raise DataError(path, label, f"output {output!r} is not an answer key", "inference_1, inference_2 or inference_3")
        if output is None:
            raise DataError(path, label, "no 'output' (gold answer), so the item cannot be scored",
                            '"output": "inference_N"')
        docs.append({"id": item_id, "conversation": turns, "reference_id": [str(r) for r in reference_ids],
                     "category": category, "choices": options, "label": ANSWERS.index(output)})
    check_unique_ids(path, [(w, str(i.get("id"))) for w, i in records])
    return docs
