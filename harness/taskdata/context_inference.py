"""ko_context_inference data: the public JSON schema of the 대화 맥락 추론 task (JSON list or JSONL)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.taskdata import check_unique_ids, read_json_records, reader, refiner

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


# --- `--refined`: cleaning chat-style conversations before the model reads them -------------------------------------
#
# Steps, in order (each a function below, tested on its own):
#   1. rename_placeholders   nameN -> 인물N, in the conversation and the options alike
#   2. normalize_utterance   collapse whitespace, expand 초성 shorthand, collapse punctuation runs, drop symbols
#   3. drop turns that carry nothing (greeting-only, jamo-only, symbols-only), except reference targets
#   4. merge_same_speaker    consecutive turns of one speaker become one turn; reference ids are remapped to it

# 초성 shorthand and what it stands for. A jamo run made only of repeats of one entry is expanded
# (ㅇㅋㅇㅋ -> 오케이오케이); any other run (ㅋㅋ, ㅠㅠ, ㅎㅎ) is left as written.
SHORTHAND = {
    "ㅇㅇ": "응", "ㅇㅋ": "오케이", "ㄱㄱ": "고고", "ㄴㄴ": "노노", "ㅈㅅ": "죄송", "ㄱㅅ": "감사", "ㅊㅋ": "축하",
    "ㄹㅇ": "리얼", "ㅇㅈ": "인정", "ㄷㄷ": "덜덜", "ㅅㄱ": "수고", "ㅎㅇ": "하이", "ㅂㅂ": "바이", "ㅁㄹ": "몰라",
}
# Longest run kept for each repeated punctuation mark ("......." -> "...", "?????" -> "??").
PUNCTUATION_RUNS = {".": 3, "?": 2, "!": 2}
# Symbols that carry no meaning in chat text. Between two Latin letters or digits they are kept (12:30, D-30, 3/4).
NOISE_SYMBOLS = "~@_/-:;()^"
# Whole utterances that only greet (compared after removing spaces, punctuation and symbols, Latin lowercased).
GREETINGS = frozenset({
    "안녕", "안녕하세요", "안녕하십니까", "안녕하세여", "안뇽", "안녕안녕", "하이", "하이루", "ㅎㅇ", "ㅎㅇㅎㅇ",
    "반가워", "반가워요", "반갑습니다", "헬로", "hi", "hello", "hey",
})
# The corpus writes anonymised person names as name1, name2, ... They are NOT speaker numbers: name1 is whoever is
# named (speaker 1 says "name1아 ..." to speaker 2; "나 어제 name1한테 고백함" names a third person), so mapping
# name1 to 화자1 would change who did what. They become 인물N, which reads as a Korean noun and keeps the data's
# particles right: the digit is read as a Sino-Korean number (인물1아 = 인물일아, 인물2야 = 인물이야).
PLACEHOLDER = re.compile(r"(?<![A-Za-z])name(\d+)", re.IGNORECASE)
PLACEHOLDER_NAME = "인물"

_JAMO = "\u3131-\u3163"  # Hangul compatibility jamo ㄱ..ㅣ
_JAMO_RUN = re.compile(f"[{_JAMO}]+")
_NOISE = re.compile(f"(?<![0-9A-Za-z])[{re.escape(NOISE_SYMBOLS)}]|[{re.escape(NOISE_SYMBOLS)}](?![0-9A-Za-z])")
_WORDLESS = re.compile(f"[^0-9A-Za-z\uac00-\ud7a3{_JAMO}]+")


def collapse_whitespace(text: str) -> str:
    """Runs of spaces, tabs and newlines become one space; ends are trimmed."""
    return " ".join(text.split())


def expand_shorthand(text: str) -> str:
    """초성 shorthand in SHORTHAND spelled out (ㅇㅋ 그럼 ㄱㄱ -> 오케이 그럼 고고); laughter and crying stay."""

    def expand(match: re.Match[str]) -> str:
        run = match.group(0)
        for short, meaning in SHORTHAND.items():
            repeats, rest = divmod(len(run), len(short))
            if not rest and short * repeats == run:
                return meaning * repeats
        return run

    return _JAMO_RUN.sub(expand, text)


def collapse_punctuation(text: str) -> str:
    """Repeated . ? ! shortened to at most PUNCTUATION_RUNS of each ("진짜?????" -> "진짜??")."""
    for mark, keep in PUNCTUATION_RUNS.items():
        text = re.sub(f"{re.escape(mark)}{{{keep + 1},}}", mark * keep, text)
    return text


def drop_symbols(text: str) -> str:
    """NOISE_SYMBOLS removed, except between Latin letters or digits where they mean something (12:30, D-30, 3~4)."""
    return _NOISE.sub("", text)


def normalize_utterance(text: str) -> str:
    """One utterance through the text steps: whitespace, shorthand, punctuation runs, symbols, whitespace again."""
    text = expand_shorthand(collapse_whitespace(text))
    return collapse_whitespace(drop_symbols(collapse_punctuation(text)))


def rename_placeholders(text: str) -> str:
    """name1 -> 인물1 (see PLACEHOLDER for why not 화자1)."""
    return PLACEHOLDER.sub(lambda m: f"{PLACEHOLDER_NAME}{m.group(1)}", text)


def is_greeting_only(text: str) -> bool:
    """The whole utterance is a greeting with no content ("안녕하세요~", "ㅎㅇ", "하이!")."""
    return _WORDLESS.sub("", text).lower() in GREETINGS


def is_jamo_only(text: str) -> bool:
    """Only jamo and punctuation (ㅠㅠ, ㅋㅋㅋ, "ㅎㅎ!"): a reaction without words."""
    letters = _WORDLESS.sub("", text)
    return bool(letters) and all("\u3131" <= ch <= "\u3163" for ch in letters)


def is_symbols_only(text: str) -> bool:
    """No Hangul, letters or digits at all ("^^", "...", "?!", or nothing left)."""
    return not _WORDLESS.sub("", text)


def carries_nothing(text: str) -> bool:
    return is_greeting_only(text) or is_jamo_only(text) or is_symbols_only(text)


def drop_empty_turns(turns: list[dict[str, Any]], targets: set[str]) -> list[dict[str, Any]]:
    """Turns that carry nothing are dropped, unless they are a reference target (the question is about them)."""
    return [t for t in turns if t["utterance_id"] in targets or not carries_nothing(t["utterance"])]


def merge_same_speaker(turns: list[dict[str, Any]],
                       reference_ids: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Consecutive turns of one speaker joined with a space into one turn that keeps the first turn's id.

    Reference ids that pointed at an absorbed turn now point at the merged turn (duplicates removed, order kept),
    so every reference id still names a turn of the conversation.
    """
    merged: list[dict[str, Any]] = []
    remap: dict[str, str] = {}
    for turn in turns:
        if merged and merged[-1]["speaker"] == turn["speaker"]:
            last = merged[-1]
            last["utterance"] = f"{last['utterance']} {turn['utterance']}".strip()
            remap[turn["utterance_id"]] = last["utterance_id"]
        else:
            merged.append(dict(turn))
    remapped = list(dict.fromkeys(remap.get(ref, ref) for ref in reference_ids))
    return merged, remapped


@refiner("ko_context_inference")
def refine_context_inference(doc: dict[str, Any]) -> dict[str, Any]:
    """The `--refined` copy of one document: same id, category, choices order and label; a cleaner conversation."""
    targets = set(doc["reference_id"])
    turns = []
    for turn in doc["conversation"]:
        raw = rename_placeholders(turn["utterance"])
        # a target whose text the steps would empty keeps its own (whitespace-collapsed) words
        text = normalize_utterance(raw) or collapse_whitespace(raw)
        turns.append({**turn, "utterance": text})
    turns = drop_empty_turns(turns, targets)
    turns, reference_ids = merge_same_speaker(turns, doc["reference_id"])
    return {**doc, "conversation": turns, "reference_id": reference_ids,
            "choices": [rename_placeholders(choice) for choice in doc["choices"]]}
