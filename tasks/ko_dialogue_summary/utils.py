"""Prompt, summary clean-up and scoring for ko_dialogue_summary; the metrics live in harness.metrics.korean."""
from __future__ import annotations

import re
from typing import Any

from harness.metrics.korean import korean_ratio, rouge_on_morphemes
from harness.taskdata import task_loader

load = task_loader("ko_dialogue_summary")

INSTRUCTION = ("다음 대화를 읽고 핵심 내용을 두세 문장의 한 문단으로 요약하세요. "
               "화자는 대화에 나온 대로 #Person1#, #Person2#와 같이 표기하세요.")
# A line that is a dialogue turn ("#Person3#: ..."), not a summary sentence that mentions a speaker ("#Person3#은 ...").
TURN = re.compile(r"^#Person\d+#\s*[:：]")
# Lines that only announce the summary: a heading ("## 요약", "**대화 요약**") or an intro ending in a colon
# ("요약:", "대화를 요약하면 다음과 같습니다:"); summary sentences never end in a colon.
HEADING_LINE = re.compile(r"^(?:#{1,6}\s+|>\s*)?[*_]*\s*(?:대화\s*)?(?:요약(?:문)?|summary)\s*[*_]*$", re.IGNORECASE)
INTRO_LINE = re.compile(r"[:：]\s*[*_]*$")
# The same label in front of the summary on one line: "요약: #Person1#은 ...", "**요약:** ...".
LABEL_PREFIX = re.compile(r"^[*_]*\s*(?:대화\s*)?(?:요약(?:문)?|summary)\s*[*_]*\s*[:：]\s*[*_]*\s*", re.IGNORECASE)
PROMPT_ECHO = "[대화]"


def doc_to_text(doc: dict[str, Any]) -> str:
    return f"{INSTRUCTION}\n\n[대화]\n{doc['dialogue']}\n\n요약:"


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["references"][0]


def clean_summary(text: str) -> str:
    """The summary paragraph of a generation, without the artefacts the reference style never has.

    Drops leading heading or intro lines ("## 요약", "요약:"), a "요약:" prefix and a leading "#PersonN#:" turn tag,
    and cuts where the model starts a new dialogue turn, echoes the prompt, or starts a second paragraph.
    "#Person1#" mentions inside a sentence stay: the references are written that way.
    """
    text = (text or "").split(PROMPT_ECHO)[0]
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and (not lines[0] or HEADING_LINE.match(lines[0]) or INTRO_LINE.search(lines[0])):
        lines.pop(0)
    if not lines:
        return ""
    lines[0] = LABEL_PREFIX.sub("", lines[0])
    lines[0] = TURN.sub("", lines[0]).strip()
    kept = [lines[0]]
    for line in lines[1:]:
        if not line or TURN.match(line):
            break
        kept.append(line)
    return " ".join(" ".join(kept).split())


def clean_summaries(resps: list[list[str]], docs: list[dict[str, Any]]) -> list[list[str]]:
    """lm-eval custom filter: clean_summary over every response of every doc."""
    return [[clean_summary(r) for r in doc_resps] for doc_resps in resps]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float | None]:
    summary = results[0]
    rouge = rouge_on_morphemes(summary, doc["references"])
    return {**rouge, "rouge_sum": (rouge["rouge1"] + rouge["rouge2"] + rouge["rougeL"]) * 100,
            "korean_ratio": korean_ratio(summary)}


def mean_defined(values: list[float | None]) -> float | None:
    """Mean over the items where the metric is defined (korean_ratio is None for an output without letters)."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None
