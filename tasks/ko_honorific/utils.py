"""ko_honorific: the prompt frame and the politeness scoring; the classifier lives in harness.metrics.speech_level."""
from __future__ import annotations

from typing import Any

from lm_eval.api.task import ConfigurableTask

from harness.metrics.korean import korean_ratio
from harness.metrics.speech_level import response_politeness
from harness.taskdata import task_loader

load = task_loader("ko_honorific")


class HonorificTask(ConfigurableTask):
    """The 반말 prompt alone as the user turn under a chat template; a 질문/답변 frame for a plain language model.

    lm-eval does not tell `doc_to_text` whether a chat template applies, so the frame is chosen where it does know:
    in `fewshot_context`, which builds every prompt (few-shot examples included).
    """

    chat_frame = False

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        # lm-eval hands the YAML's `class:` key on to TaskConfig, which does not know it
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"})

    def fewshot_context(self, doc: dict[str, Any], num_fewshot: int, *args: Any, **kwargs: Any) -> Any:
        self.chat_frame = bool(kwargs.get("apply_chat_template"))
        return super().fewshot_context(doc, num_fewshot, *args, **kwargs)

    def doc_to_text(self, doc: dict[str, Any], doc_to_text: Any = None) -> str:
        return doc["prompt"] if self.chat_frame else f"질문: {doc['prompt']}\n답변:"

    def doc_to_target(self, doc: dict[str, Any], doc_to_target: Any = None) -> str:
        # the polite reference answer of train/dev items (few-shot examples); test items have none
        return doc.get("reference") or ""


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float | None]:
    """Per answer: all judged sentences polite (1/0), the share of polite sentences, the share of Hangul letters.

    An answer with no judgeable sentence (empty, English, code or a bare noun list) scores polite_rate 0: it shows
    no 존댓말. Its polite_sentence_rate is undefined (None), so it is left out of that mean rather than counted as 0.
    """
    answer = results[0]
    politeness = response_politeness(answer)
    return {"polite_rate": 1.0 if politeness["all_polite"] else 0.0,
            "polite_sentence_rate": politeness["polite_share"],
            "korean_ratio": korean_ratio(answer)}


def mean_defined(values: list[float | None]) -> float | None:
    """Mean over the answers where the metric is defined (None = no judgeable sentence / no letters)."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None
