"""ko_honorific: shipped data and split hygiene, the reader's error paths, the scoring, and a tiny-model run."""
from __future__ import annotations

import difflib
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import select

from harness.config import RunConfig
from harness.errors import DataError
from harness.metrics.speech_level import response_politeness
from harness.runner import run
from harness.store import open_store
from harness.store.schema import Run, Sample, Score
from harness.taskdata import read_records
from harness.taskdata.honorific import TOPICS, TRAPS
from harness.tasks import get_task
from tests.conftest import REPO, kobench

DATA = REPO / "tasks" / "ko_honorific" / "data"
SPLITS = {"test": 150, "train": 150, "dev": 20}


def _task_utils() -> ModuleType:
    """The task's own utils.py, under a name of its own (every task folder has a `utils`)."""
    spec = importlib.util.spec_from_file_location("ko_honorific_utils", REPO / "tasks" / "ko_honorific" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


honorific = _task_utils()


def _docs(split: str) -> list[dict]:
    return read_records(DATA / f"{split}.jsonl", "ko_honorific")


def _write(tmp_path: Path, lines: list[object], name: str = "items.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                    encoding="utf-8")
    return path


# --------------------------------------------------------------------------- shipped data


def test_shipped_splits_schema_counts_and_topics() -> None:
    for split, minimum in SPLITS.items():
        docs = _docs(split)
        assert len(docs) >= minimum, split
        assert len({d["id"] for d in docs}) == len(docs)
        assert all(d["id"].startswith(f"hon-{split}-") for d in docs)
        topics = [d["topic"] for d in docs]
        assert set(topics) == set(TOPICS), split
        # every topic carries a fair share: at least a quarter of the split
        assert all(topics.count(t) >= len(docs) // 4 for t in TOPICS), split
        if split == "test":
            assert all(set(d) == {"id", "prompt", "topic", "traps"} for d in docs)
        else:
            assert all(d["reference"] for d in docs)
            # train/dev lines are exactly one user turn and one assistant turn
            for line in (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
                assert [m["role"] for m in json.loads(line)["messages"]] == ["user", "assistant"]


def test_test_split_covers_every_trap() -> None:
    docs = _docs("test")
    for trap in TRAPS:
        assert sum(trap in d["traps"] for d in docs) >= 15, trap
    assert {t for d in docs for t in d["traps"]} <= set(TRAPS)


def _normalised(prompt: str) -> str:
    return re.sub(r"[\W_]+", "", prompt)


def test_no_prompt_shared_or_near_duplicated_between_splits() -> None:
    prompts = {split: [_normalised(d["prompt"]) for d in _docs(split)] for split in SPLITS}
    for split, items in prompts.items():
        assert len(set(items)) == len(items), f"duplicate prompt within {split}"
    for first, second in (("test", "train"), ("test", "dev"), ("train", "dev")):
        for a in prompts[first]:
            for b in prompts[second]:
                # the closest pair in the shipped data is 0.6 ("고마워 ㅎㅎ" / "ㅇㅇ 고마워")
                assert difflib.SequenceMatcher(None, a, b).ratio() < 0.8, (first, a, second, b)


def test_reference_answers_are_polite_and_prompts_are_not() -> None:
    for split in ("train", "dev"):
        for doc in _docs(split):
            judged = response_politeness(doc["reference"])
            assert judged["sentences"] >= 1 and judged["all_polite"], (doc["id"], judged["levels"])
    for split in SPLITS:
        for doc in _docs(split):
            # the premise of the task: every question is asked in 반말 (some have no judgeable ending, none is polite)
            assert response_politeness(doc["prompt"])["polite"] == 0, doc["id"]


# --------------------------------------------------------------------------- reader


def test_reader_accepts_prompt_lines_and_chat_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, [
        {"prompt": "  이거 왜 안 돼?  "},
        {"id": "c1", "topic": "technical", "messages": [
            {"role": "system", "content": "너는 도우미야."},
            {"role": "user", "content": "첫 질문"}, {"role": "assistant", "content": "첫 답입니다."},
            {"role": "user", "content": "그럼 이건?"}, {"role": "assistant", "content": "이건 이렇습니다."}]},
        {"id": "c2", "messages": [{"role": "user", "content": "답 없는 질문이야?"}]},
    ])
    docs = read_records(path, "ko_honorific")
    assert docs == [
        {"id": "items-001", "prompt": "이거 왜 안 돼?", "topic": None, "traps": []},
        {"id": "c1", "prompt": "그럼 이건?", "topic": "technical", "traps": [], "reference": "이건 이렇습니다."},
        {"id": "c2", "prompt": "답 없는 질문이야?", "topic": None, "traps": []},
    ]


@pytest.mark.parametrize(("lines", "message"), [
    ([{"prompt": "a"}, "{not json"], "items.jsonl: line 2: invalid JSON"),
    ([{"prompt": "a"}, "[1, 2]"], "line 2: expected a JSON object, got list"),
    ([{"id": "x", "question": "a"}], "line 1 (id x): no 'prompt' or 'messages' (keys: id, question)"),
    ([{"prompt": "   "}], "line 1: 'prompt' must be non-empty text"),
    ([{"prompt": 3}], "line 1: 'prompt' must be non-empty text, got 3"),
    ([{"prompt": "a", "messages": []}], "line 1: has both 'prompt' and 'messages'"),
    ([{"messages": []}], "line 1: 'messages' must be a non-empty list"),
    ([{"messages": [{"role": "assistant", "content": "네."}]}], "line 1: 'messages' has no user turn"),
    ([{"messages": [{"role": "human", "content": "야"}]}], "line 1: messages turn 1 is {'role': 'human'"),
    ([{"messages": [{"role": "user", "content": " "}]}], "line 1: the last user turn is empty"),
    ([{"prompt": "a", "traps": "code"}], "line 1: 'traps' must be a list of names"),
    ([{"prompt": "a", "topic": ""}], "line 1: 'topic' must be non-empty text"),
    ([{"id": "d", "prompt": "a"}, {"id": "d", "prompt": "b"}], "line 2: duplicate id 'd' (first at line 1)"),
])
def test_reader_errors_name_file_and_line(tmp_path: Path, lines: list[object], message: str) -> None:
    path = _write(tmp_path, lines)
    with pytest.raises(DataError) as caught:
        read_records(path, "ko_honorific")
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_reader_rejects_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="the file is empty"):
        read_records(path, "ko_honorific")


def test_cli_reports_a_bad_data_file_in_one_line(tiny_model: Path, tmp_path: Path) -> None:
    bad = _write(tmp_path, [{"prompt": "야 이거 뭐야?"}, {"id": "q2", "messages": [{"role": "assistant", "content": "네"}]}])
    proc = kobench("run", "--model", str(tiny_model), "--tasks", "ko_honorific", "--data", f"ko_honorific={bad}",
                   "--db", str(tmp_path / "r.db"), "--device", "cpu")
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "line 2 (id q2): 'messages' has no user turn" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r.db").exists()


# --------------------------------------------------------------------------- scoring

POLITE_WITH_CODE_AND_LIST = """파이썬에서 리스트를 뒤집는 방법은 두 가지예요.

1. `reverse()` 메서드는 원본을 바꿉니다.
2. 슬라이싱은 새 리스트를 만들어요.

```python
nums = [1, 2, 3]
nums.reverse()  # 원본을 뒤집는다
```

상황에 맞게 고르시면 됩니다."""
BANMAL = "그냥 라면 끓여 먹어. 냉장고에 계란 있으면 하나 넣고. 간단하지?"
MIXED = "김치를 먼저 볶는 게 좋아요. 그래야 맛이 깊어져. 돼지고기도 같이 볶으시면 됩니다."
ENGLISH = "You should fry the kimchi first. It makes the stew richer."


def test_process_results_on_hand_written_answers() -> None:
    doc = {"id": "x", "prompt": "리스트 어떻게 뒤집어?", "topic": "technical", "traps": ["code"]}
    score = {name: honorific.process_results(doc, [text])
             for name, text in [("polite", POLITE_WITH_CODE_AND_LIST), ("banmal", BANMAL), ("mixed", MIXED),
                                ("english", ENGLISH), ("empty", "")]}
    # polite: 4 judged sentences 두 가지예요 / 바꿉니다 / 만들어요 / 됩니다, all polite; the 해라체 comment
    # "뒤집는다" is inside the code block and not judged. Hangul: 20 + 11 + 14 + 7 (code comment) + 12 = 64
    # syllables; Latin letters: reverse 7 + python 6 + nums 4 + nums.reverse 11 = 28 -> 64 / 92.
    assert score["polite"] == {"polite_rate": 1.0, "polite_sentence_rate": 1.0,
                               "korean_ratio": pytest.approx(64 / 92)}
    # 반말: 먹어 / 넣고 / 간단하지, none polite
    assert score["banmal"] == {"polite_rate": 0.0, "polite_sentence_rate": 0.0, "korean_ratio": 1.0}
    # mixed: 좋아요 (polite), 깊어져 (반말), 됩니다 (polite) -> one slip fails the answer, 2/3 of the sentences
    assert score["mixed"] == {"polite_rate": 0.0, "polite_sentence_rate": pytest.approx(2 / 3), "korean_ratio": 1.0}
    # English: no judgeable sentence -> not polite, share undefined; no Hangul among its letters
    assert score["english"] == {"polite_rate": 0.0, "polite_sentence_rate": None, "korean_ratio": 0.0}
    # empty: nothing to judge and no letters at all
    assert score["empty"] == {"polite_rate": 0.0, "polite_sentence_rate": None, "korean_ratio": None}

    column = {metric: [s[metric] for s in score.values()] for metric in score["polite"]}
    # polite_sentence_rate: mean of the defined per-answer shares (1 + 0 + 2/3) / 3
    assert honorific.mean_defined(column["polite_sentence_rate"]) == pytest.approx(5 / 9)
    assert honorific.mean_defined(column["korean_ratio"]) == pytest.approx((64 / 92 + 1 + 1 + 0) / 4)
    assert honorific.mean_defined([None, None]) is None


def test_task_metadata_and_generation_settings() -> None:
    info = get_task("ko_honorific")
    assert info.data_format == "ko_honorific" and info.main_metric == "polite_rate"
    assert info.scale == 100 and info.breakdown == ["topic"]
    assert info.metrics == ["polite_rate", "polite_sentence_rate", "korean_ratio"]
    generation = info.raw["generation_kwargs"]
    # a multi-paragraph answer must not be cut at its first blank line
    assert all("\n\n" not in stop for stop in generation["until"]) and "\n질문:" in generation["until"]
    assert generation["max_gen_toks"] == 256 and generation["do_sample"] is False


def test_prompt_is_the_bare_question_under_a_chat_template() -> None:
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(REPO / "tasks"), include_defaults=False, metadata={})
    task = manager.load(["ko_honorific"])["tasks"]["ko_honorific"]
    task.set_fewshot_seed(0)
    doc = task.test_docs()[0]
    dev = _docs("dev")[0]
    shown = lambda messages, add_generation_prompt=True: messages  # noqa: E731 - the chat template's input
    assert task.fewshot_context(doc, 0, apply_chat_template=True, chat_template=shown) == [
        {"role": "user", "content": doc["prompt"]}]
    assert task.fewshot_context(doc, 1, apply_chat_template=True, fewshot_as_multiturn=True,
                                chat_template=shown) == [
        {"role": "user", "content": dev["prompt"]}, {"role": "assistant", "content": dev["reference"]},
        {"role": "user", "content": doc["prompt"]}]
    assert task.fewshot_context(doc, 0) == f"질문: {doc['prompt']}\n답변:"
    assert task.fewshot_context(doc, 1) == (f"질문: {dev['prompt']}\n답변: {dev['reference']}\n\n"
                                            f"질문: {doc['prompt']}\n답변:")


# --------------------------------------------------------------------------- a real run


def test_tiny_model_run_lands_in_the_store(tiny_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    result = run(RunConfig(model=str(tiny_model), tasks=["ko_honorific"], limit=2, db=str(db), device="cpu"))
    assert result.status == "done" and result.n["ko_honorific"] == 2

    # limit 2 spreads over the topics in sorted order: the first emotional and the first everyday item
    test_docs = _docs("test")
    expected_docs = sorted([next(d for d in test_docs if d["topic"] == t) for t in ("emotional", "everyday")],
                           key=test_docs.index)
    store = open_store(db, readonly=True)
    with store.session() as session:
        assert session.get(Run, result.run_id).status == "done"
        scores = {s.metric: s.value for s in session.scalars(select(Score).where(Score.task == "ko_honorific"))}
        samples = session.scalars(select(Sample).where(Sample.task == "ko_honorific").order_by(Sample.doc_id)).all()
        rows = [(s.item_id, s.prompt, s.output, dict(s.metrics)) for s in samples]
    store.dispose()

    assert [r[0] for r in rows] == [d["id"] for d in expected_docs]
    # the tiny model has no chat template: the plain 질문/답변 frame
    assert [r[1] for r in rows] == [f"질문: {d['prompt']}\n답변:" for d in expected_docs]
    polite = []
    for (_, _, output, metrics), doc in zip(rows, expected_docs):
        judged = response_politeness(output)
        polite.append(1.0 if judged["all_polite"] else 0.0)
        assert metrics["polite_rate"] == polite[-1] and metrics["_topic"] == doc["topic"]
        assert metrics.get("polite_sentence_rate") == (pytest.approx(judged["polite_share"])
                                                       if judged["polite_share"] is not None else None)
    assert scores["polite_rate"] == pytest.approx(sum(polite) / 2)
    assert "polite_sentence_rate" in scores and "korean_ratio" in scores
    for doc, value in zip(expected_docs, polite):
        assert scores[f"polite_rate[topic={doc['topic']}]"] == pytest.approx(value)
    assert result.scores["ko_honorific"]["polite_rate"] == pytest.approx(scores["polite_rate"])
