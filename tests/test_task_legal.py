"""ko_legal_qa / ko_legal_mcq(_gen): readers, key-term recall, shipped data hygiene, category filter, tiny-model runs."""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest
import sacrebleu
from rich.console import Console
from sqlalchemy import select

from harness.cli.results import print_scores
from harness.config import RunConfig
from harness.errors import DataError, KobenchError
from harness.metrics.korean import key_term_recall, rouge_on_morphemes
from harness.runner import plan_tasks, run
from harness.store import open_store
from harness.store.schema import Sample, Score
from harness.taskdata import load_splits, read_records
from harness.tasks import get_task
from tests.conftest import REPO, kobench

QA = "ko_legal_qa"
MCQ = "ko_legal_mcq"
MCQ_GEN = "ko_legal_mcq_gen"
QA_DIR = REPO / "tasks" / QA
MCQ_DIR = REPO / "tasks" / MCQ
QA_COLUMNS = ["id", "question", "answer", "category", "difficulty", "key_terms"]
CATEGORIES = {"전세사기", "부동산물권", "계약", "불법행위", "상속", "채권"}
DIFFICULTIES = {"초급", "중급", "고급"}


def _utils():  # noqa: ANN202 - the task's utils.py, loaded the way lm-eval loads `!function utils.x`
    spec = importlib.util.spec_from_file_location("ko_legal_qa_utils", QA_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


utils = _utils()


def _write_csv(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


def _write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return path


QA_ROWS = [
    ["q1", "전입신고를 한 날 근저당이 설정되면 누가 앞서나요?",
     "같은 날 설정된 근저당권이 앞섭니다. 대항력은 전입신고 다음 날 0시에 생기기 때문입니다.", "전세사기", "중급",
     "대항력;근저당권"],
    ["q2", "아버지 빚이 많은데 상속을 포기하려면 어떻게 하나요?",
     "상속개시를 안 날부터 3개월 안에 가정법원에 상속포기를 신고하세요.", "상속", "초급", ""],
]
MCQ_ITEM = {"id": "m1", "question": "민법상 일반 채권의 소멸시효 기간은?", "choices": ["3년", "5년", "10년", "20년"],
            "answer": 2, "explanation": "민법 제162조 제1항", "category": "채권", "difficulty": "초급"}


# --------------------------------------------------------------------------- key-term recall


def test_key_term_recall_with_particles_attached() -> None:
    # answer morphemes: 대항력|을 갖추|고 확정|일자|를 받|으면 ...; term morphemes: [대항력], [확정, 일자], [우선변제권]
    # 대항력 and 확정일자 occur (particles 을/를 are separate morphemes), 우선변제권 does not -> 2/3
    answer = "대항력을 갖추고 확정일자를 받으면 보증금을 지킬 수 있습니다."
    assert key_term_recall(answer, ["대항력", "확정일자", "우선변제권"]) == pytest.approx(2 / 3)
    # the citation and 계약금 and 해제 occur ("제565조에", "계약금을", "해제할"); 이행에 착수 does not -> 3/4
    answer = "민법 제565조에 따라 계약금을 포기하면 해제할 수 있습니다."
    assert key_term_recall(answer, ["민법 제565조", "계약금", "해제", "이행에 착수"]) == pytest.approx(3 / 4)
    # a citation matches however it is spaced -> 1/1
    assert key_term_recall("민법 제 565 조에 따라", ["민법 제565조"]) == 1.0
    assert key_term_recall("아무 관련 없는 답변입니다.", ["대항력", "확정일자"]) == 0.0


def test_items_without_key_terms_are_not_computed_not_zero() -> None:
    doc = {"answer": "상속포기는 가정법원에 신고합니다.", "key_terms": []}
    scores = utils.process_results(doc, ["답변: 상속포기는 가정법원에 신고합니다."])
    assert scores["key_term_recall"] is None
    assert scores["rougeL"] == 1.0  # the "답변:" label is stripped before scoring
    # task mean over the items that have key terms: (1 + 0) / 2; None when no item has any
    assert utils.mean_defined([1.0, None, 0.0]) == 0.5
    assert utils.mean_defined([None, None]) is None


def test_process_results_scores_against_the_reference() -> None:
    doc = {"answer": "대항력은 전입신고 다음 날 생깁니다.", "key_terms": ["대항력", "전입신고", "확정일자"]}
    output = "대항력은 전입신고를 마친 다음 날 0시에 생깁니다."
    scores = utils.process_results(doc, [output])
    assert scores["key_term_recall"] == pytest.approx(2 / 3)  # 확정일자 missing
    assert scores["rougeL"] == pytest.approx(rouge_on_morphemes(output, doc["answer"])["rougeL"])
    assert scores["chrf"] == (doc["answer"], output)
    assert scores["chrf_sentence"] == pytest.approx(sacrebleu.sentence_chrf(output, [doc["answer"]]).score)
    assert scores["korean_ratio"] == pytest.approx(1.0)  # digits are not letters
    pairs = [(doc["answer"], output), ("상속포기는 가정법원에 신고합니다.", "가정법원에 신고하세요.")]
    refs, outs = zip(*pairs)
    assert utils.corpus_chrf(pairs) == pytest.approx(sacrebleu.corpus_chrf(list(outs), [list(refs)]).score)


# --------------------------------------------------------------------------- readers


def test_qa_reader_reads_required_and_optional_columns(tmp_path: Path) -> None:
    docs = read_records(_write_csv(tmp_path / "qa.csv", QA_COLUMNS, QA_ROWS), QA)
    assert [d["id"] for d in docs] == ["q1", "q2"]
    assert docs[0]["key_terms"] == ["대항력", "근저당권"] and docs[1]["key_terms"] == []
    assert docs[1]["category"] == "상속" and docs[1]["difficulty"] == "초급"
    # without id and key_terms: generated ids, no key terms
    docs = read_records(_write_csv(tmp_path / "min.csv", QA_COLUMNS[1:5], [r[1:5] for r in QA_ROWS]), QA)
    assert [d["id"] for d in docs] == ["row_0001", "row_0002"] and all(d["key_terms"] == [] for d in docs)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "cp949"])
def test_readers_read_bom_and_cp949_files(tmp_path: Path, encoding: str) -> None:
    utf8 = read_records(_write_csv(tmp_path / "u.csv", QA_COLUMNS, QA_ROWS), QA)
    other = read_records(_write_csv(tmp_path / "o.csv", QA_COLUMNS, QA_ROWS, encoding=encoding), QA)
    assert other == utf8
    mcq = tmp_path / "m.jsonl"
    mcq.write_bytes((json.dumps(MCQ_ITEM, ensure_ascii=False) + "\n").encode(encoding))
    assert read_records(mcq, MCQ)[0]["choices"] == MCQ_ITEM["choices"]


def test_qa_missing_columns_are_named_in_one_line(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "bad.csv", ["question", "category"], [[r[1], r[3]] for r in QA_ROWS])
    with pytest.raises(DataError) as err:
        read_records(path, QA)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "missing column(s) answer, difficulty" in message and "columns: question, category" in message


@pytest.mark.parametrize(("column", "line"), [("answer", 3), ("question", 2)])
def test_qa_empty_field_names_the_line(tmp_path: Path, column: str, line: int) -> None:
    rows = [list(r) for r in QA_ROWS]
    rows[line - 2][QA_COLUMNS.index(column)] = " "
    with pytest.raises(DataError, match=rf"line {line} \(id q{line - 1}\): empty '{column}'"):
        read_records(_write_csv(tmp_path / "bad.csv", QA_COLUMNS, rows), QA)


def test_qa_duplicate_ids_are_an_error(tmp_path: Path) -> None:
    rows = [QA_ROWS[0], ["q1", *QA_ROWS[1][1:]]]
    with pytest.raises(DataError, match=r"line 3: duplicate id 'q1' \(first at line 2\)"):
        read_records(_write_csv(tmp_path / "dup.csv", QA_COLUMNS, rows), QA)


@pytest.mark.parametrize(("answer", "label"), [(0, 0), (3, 3), ("A", 0), ("d", 3), (" C ", 2)])
def test_mcq_answer_as_index_or_letter(tmp_path: Path, answer: object, label: int) -> None:
    docs = read_records(_write_jsonl(tmp_path / "m.jsonl", [{**MCQ_ITEM, "answer": answer}]), MCQ)
    assert docs[0]["label"] == label and docs[0]["choices"][label] == MCQ_ITEM["choices"][label]


@pytest.mark.parametrize(("change", "problem"), [
    ({"choices": ["3년", "5년", "10년"]}, "'choices' must be a list of 4 options, got 3"),
    ({"choices": ["3년", "", "10년", "20년"]}, "every choice must be a non-empty string"),
    ({"answer": 4}, "'answer' 4 is not a choice"),
    ({"answer": "E"}, "'answer' 'E' is not a choice"),
    ({"answer": True}, "'answer' True is not a choice"),
    ({"category": ""}, "missing or empty 'category'"),
    ({"id": ""}, "item has no 'id'"),
])
def test_mcq_bad_items_name_file_line_and_id(tmp_path: Path, change: dict, problem: str) -> None:
    good = {**MCQ_ITEM, "id": "m0"}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, {**MCQ_ITEM, **change}])
    with pytest.raises(DataError) as err:
        read_records(path, MCQ)
    message = str(err.value)
    assert message.startswith(f"{path}: line 2") and problem in message and "\n" not in message
    if change.get("id", "m1"):
        assert "(id m1)" in message


def test_cli_rejects_a_file_without_answer_in_one_line(tiny_model: Path, tmp_path: Path) -> None:
    bad = _write_csv(tmp_path / "bad.csv", ["question", "category", "difficulty"], [r[1:2] + r[3:5] for r in QA_ROWS])
    db = tmp_path / "r.db"
    proc = kobench("run", "--model", str(tiny_model), "--tasks", QA, "--data", f"{QA}={bad}", "--db", str(db),
                   "--device", "cpu")
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert str(bad) in lines[0] and "missing column(s) answer" in lines[0]
    assert not db.exists()


# --------------------------------------------------------------------------- shipped data


def _qa_split(split: str) -> list[dict[str, str]]:
    with open(QA_DIR / "data" / f"{split}.csv", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == QA_COLUMNS
        return list(reader)


def _mcq_split(split: str) -> list[dict]:
    return [json.loads(line) for line in (MCQ_DIR / "data" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def _char_3grams(text: str) -> set[str]:
    flat = "".join(text.split())
    return {flat[i:i + 3] for i in range(len(flat) - 2)}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def test_task_metadata() -> None:
    qa = get_task(QA)
    assert qa.output_type == "generate_until" and qa.data_format == QA
    assert qa.main_metric == "key_term_recall" and qa.scale == 100
    assert qa.breakdown == ["category", "difficulty"]
    assert set(qa.metrics) == {"key_term_recall", "rougeL", "chrf", "chrf_sentence", "korean_ratio"}
    generation = qa.raw["generation_kwargs"]
    assert "\n\n" not in generation["until"] and 256 <= generation["max_gen_toks"] <= 384
    mcq, gen = get_task(MCQ), get_task(MCQ_GEN)
    assert mcq.output_type == "multiple_choice" and mcq.main_metric == "acc" and mcq.breakdown == ["category"]
    assert gen.output_type == "generate_until" and gen.main_metric == "exact_match,letter"
    assert mcq.data_format == gen.data_format == MCQ


def test_shipped_qa_schema_counts_and_key_terms() -> None:
    splits = {split: _qa_split(split) for split in ("test", "train", "dev")}
    assert len(splits["test"]) >= 120 and len(splits["train"]) >= 150 and len(splits["dev"]) >= 20
    for split, rows in splits.items():
        assert [row["id"] for row in rows] == [f"legal-{split}-{i:03d}" for i in range(1, len(rows) + 1)]
        for row in rows:
            assert row["category"] in CATEGORIES and row["difficulty"] in DIFFICULTIES, row["id"]
            terms = [t for t in row["key_terms"].split(";") if t.strip()]
            assert len(terms) >= 3, row["id"]
            # every key term is written, exactly, in its reference answer
            assert [t for t in terms if t not in row["answer"]] == [], row["id"]
        docs = read_records(QA_DIR / "data" / f"{split}.csv", QA)
        assert len(docs) == len(rows)
    # every category at every difficulty in the test split
    cells = Counter((row["category"], row["difficulty"]) for row in splits["test"])
    assert set(cells) == {(c, d) for c in CATEGORIES for d in DIFFICULTIES}
    assert min(cells.values()) >= 5


def test_shipped_mcq_schema_counts_and_answer_balance() -> None:
    test, dev = _mcq_split("test"), _mcq_split("dev")
    assert len(test) == 100 and len(dev) == 8
    assert [item["id"] for item in test] == [f"mcq-{i:03d}" for i in range(1, 101)]
    assert [item["id"] for item in dev] == [f"mcq-dev-{i:03d}" for i in range(1, 9)]
    assert Counter(item["answer"] for item in test) == {0: 25, 1: 25, 2: 25, 3: 25}
    cells = Counter((item["category"], item["difficulty"]) for item in test)
    assert set(cells) == {(c, d) for c in CATEGORIES for d in DIFFICULTIES}
    for item in test + dev:
        assert len(set(item["choices"])) == 4 and item["explanation"], item["id"]
    assert len(read_records(MCQ_DIR / "data" / "test.jsonl", MCQ)) == 100


def test_split_hygiene() -> None:
    qa = [(split, row["id"], row["question"]) for split in ("test", "train", "dev") for row in _qa_split(split)]
    mcq = [("mcq", item["id"], item["question"]) for split in ("test", "dev") for item in _mcq_split(split)]
    questions = [q for _, _, q in qa + mcq]
    assert len(set(questions)) == len(questions)
    grams = {item_id: _char_3grams(q) for _, item_id, q in qa + mcq}
    # no open question near-duplicates another (across or within splits): the closest pair shares < 40% of 3-grams
    worst = max((_jaccard(grams[a], grams[b]), a, b) for (_, a, _), (_, b, _) in combinations(qa, 2))
    assert worst[0] < 0.4, worst
    # the multiple-choice questions do not restate an open test question
    open_test = [item_id for split, item_id, _ in qa if split == "test"]
    worst = max((_jaccard(grams[m], grams[q]), m, q) for _, m, _ in mcq for q in open_test)
    assert worst[0] < 0.3, worst


# --------------------------------------------------------------------------- categories


def test_category_filter_reaches_the_loader_and_the_plan() -> None:
    config = RunConfig(model="unused", tasks=[QA, MCQ], categories=["전세사기", "상속"])
    plans = plan_tasks(config)
    test = _qa_split("test")
    expected = sum(1 for row in test if row["category"] in {"전세사기", "상속"})
    assert plans[0].n_items == expected == 40
    dataset = load_splits(QA, kobench_categories={QA: ["전세사기", "상속"]})
    assert len(dataset["test"]) == expected and set(dataset["test"]["category"]) == {"전세사기", "상속"}
    assert len(dataset["train"]) == len(_qa_split("train"))  # only the evaluated split is filtered


def test_unknown_category_names_the_known_ones(tiny_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    with pytest.raises(KobenchError) as err:
        run(RunConfig(model=str(tiny_model), tasks=[QA], categories=["전세사기", "전세사가"], db=str(db), device="cpu"))
    message = str(err.value)
    assert message.startswith("--categories 전세사가: unknown category for ko_legal_qa")
    assert "Known categories: 계약, 부동산물권, 불법행위, 상속, 전세사기, 채권" in message
    assert not db.exists()


# --------------------------------------------------------------------------- runs on the tiny model


def test_tasks_score_the_tiny_model_into_the_store(tiny_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    result = run(RunConfig(model=str(tiny_model), tasks=[QA, MCQ, MCQ_GEN], limit=3, db=str(db), device="cpu"))
    assert result.status == "done" and result.n == {QA: 3, MCQ: 3, MCQ_GEN: 3}

    store = open_store(db, readonly=True)
    with store.session() as session:
        samples = {task: session.scalars(select(Sample).where(Sample.task == task).order_by(Sample.doc_id)).all()
                   for task in (QA, MCQ, MCQ_GEN)}
        scores = {(s.task, s.metric): (s.value, s.n) for s in session.scalars(select(Score))}
    store.dispose()

    docs = {d["id"]: d for d in read_records(QA_DIR / "data" / "test.csv", QA)}
    qa_samples = samples[QA]
    assert len(qa_samples) == 3
    # the 3-item subset is spread over categories (round-robin over the first breakdown field)
    assert len({s.metrics["_category"] for s in qa_samples}) == 3
    outputs = [utils.clean_answer(s.output) for s in qa_samples]
    references = [docs[s.item_id]["answer"] for s in qa_samples]
    for sample, output in zip(qa_samples, outputs):
        doc = docs[sample.item_id]
        assert sample.target == doc["answer"] and sample.metrics["_difficulty"] == doc["difficulty"]
        assert sample.metrics["key_term_recall"] == pytest.approx(key_term_recall(output, doc["key_terms"]))
        assert sample.metrics["chrf_sentence"] == pytest.approx(sacrebleu.sentence_chrf(output, [doc["answer"]]).score)
        assert "chrf" not in sample.metrics  # the corpus pair is not a per-sample number
    # corpus chrF from the stored outputs, recomputed with sacrebleu
    assert scores[(QA, "chrf")][0] == pytest.approx(sacrebleu.corpus_chrf(outputs, [references]).score)
    mean_recall = sum(s.metrics["key_term_recall"] for s in qa_samples) / 3
    assert scores[(QA, "key_term_recall")][0] == pytest.approx(mean_recall)
    assert result.scores[QA]["key_term_recall"] == pytest.approx(mean_recall)
    for field_name in ("category", "difficulty"):
        groups = {s.metrics[f"_{field_name}"] for s in qa_samples}
        for group in groups:
            members = [s for s in qa_samples if s.metrics[f"_{field_name}"] == group]
            value, n = scores[(QA, f"rougeL[{field_name}={group}]")]
            assert n == len(members) and value == pytest.approx(sum(s.metrics["rougeL"] for s in members) / n)

    mcq_samples = samples[MCQ]
    assert len(mcq_samples) == 3
    acc = sum(int(s.output) == int(s.target) for s in mcq_samples) / 3
    assert scores[(MCQ, "acc")][0] == pytest.approx(acc)
    assert any(metric.startswith("acc[category=") for task, metric in scores if task == MCQ)
    gen_samples = samples[MCQ_GEN]
    assert all(s.target in "ABCD" for s in gen_samples)
    assert scores[(MCQ_GEN, "exact_match,letter")][0] == pytest.approx(
        sum(s.metrics["exact_match,letter"] for s in gen_samples) / 3)


def test_category_filtered_cp949_file_without_key_terms_reports_n_a(tiny_model: Path, tmp_path: Path) -> None:
    rows = [["c1", "보증금을 못 받았는데 이사해도 되나요?", "임차권등기명령을 먼저 신청하세요.", "전세사기", "초급", ""],
            ["c2", "빌려준 돈의 시효는 몇 년인가요?", "일반 채권은 10년입니다.", "채권", "초급", ""],
            ["c3", "유언장에 주소가 없으면 무효인가요?", "자필증서 유언은 주소를 자서해야 합니다.", "상속", "중급", ""]]
    data = _write_csv(tmp_path / "mine.csv", QA_COLUMNS, rows, encoding="cp949")
    db = tmp_path / "r.db"
    result = run(RunConfig(model=str(tiny_model), tasks=[QA], data={QA: str(data)}, categories=["전세사기", "상속"],
                           db=str(db), device="cpu"))
    assert result.n[QA] == 2
    assert result.scores[QA]["key_term_recall"] is None and result.scores[QA]["rougeL"] is not None

    store = open_store(db, readonly=True)
    with store.session() as session:
        samples = session.scalars(select(Sample).where(Sample.task == QA)).all()
        stored = {s.metric: s.value for s in session.scalars(select(Score).where(Score.task == QA))}
    store.dispose()
    assert sorted(s.item_id for s in samples) == ["c1", "c3"]
    assert {s.metrics["_category"] for s in samples} == {"전세사기", "상속"}
    assert all("key_term_recall" not in s.metrics for s in samples)
    assert "key_term_recall" in stored and stored["key_term_recall"] is None  # a row saying "not computed", not 0

    console = Console(record=True, width=200)
    print_scores(console, result)
    line = next(line for line in console.export_text().splitlines() if "key_term_recall" in line)
    assert re.search(r"key_term_recall\s*│\s*n/a", line), line
