"""ko_dialogue_summary: reader, summary clean-up, ROUGE on Mecab morphemes, shipped data hygiene, a tiny-model run."""
from __future__ import annotations

import csv
import importlib.util
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest
from rouge_score import rouge_scorer
from sqlalchemy import select

from harness.config import RunConfig
from harness.errors import DataError
from harness.metrics.korean import MASK, MorphemeTokenizer, morphemes
from harness.ranking import ranking
from harness.runner import run
from harness.store import open_store
from harness.store.schema import Sample, Score
from harness.taskdata import read_records
from harness.tasks import get_task
from tests.conftest import REPO, kobench

TASK = "ko_dialogue_summary"
TASK_DIR = REPO / "tasks" / TASK
COLUMNS = ["fname", "dialogue", "summary", "summary2", "topic"]
TURN = re.compile(r"^#Person(\d)#: \S")


def _utils():  # noqa: ANN202 - the task's utils.py, loaded the way lm-eval loads `!function utils.x`
    spec = importlib.util.spec_from_file_location("ko_dialogue_summary_utils", TASK_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


utils = _utils()


def _write_csv(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> Path:
    with open(path, "w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


ROWS = [
    ["t1", "#Person1#: 우산 좀 빌려줄래?\n#Person2#: 응, 여기 있어.", "#Person2#가 #Person1#에게 우산을 빌려준다.",
     "우산을 빌린다.", "일상"],
    ["t2", "#Person1#: 이 번호로 연락 주세요. #PhoneNumber#예요.\n#Person2#: 네, 저장할게요.",
     "#Person1#은 #Person2#에게 연락처를 알려 준다.", "", "직장"],
]


# --------------------------------------------------------------------------- metric


def test_morphemes_of_the_fixture_pairs() -> None:
    # The hand computations below start from these lists (Mecab, masks kept whole, '.' dropped).
    assert morphemes("#Person2#는 회의를 내일로 미룬다.") == ["#Person2#", "는", "회의", "를", "내일", "로", "미룬다"]
    assert morphemes("#Person2#는 내일 회의를 취소한다.") == ["#Person2#", "는", "내일", "회의", "를", "취소", "한다"]
    assert morphemes("#Person1#은 우산을 산다.") == ["#Person1#", "은", "우산", "을", "산다"]
    assert morphemes("#Person1#은 우산을 빌린다.") == ["#Person1#", "은", "우산", "을", "빌린다"]
    assert morphemes("#Person1#은 편의점에서 우산을 산다.") == ["#Person1#", "은", "편의점", "에서", "우산", "을", "산다"]


def test_rouge_on_one_reference_matches_hand_computation() -> None:
    # pred [#P2 는 회의 를 내일 로 미룬다] (7) vs ref [#P2 는 내일 회의 를 취소 한다] (7)
    # R1: shared unigrams #P2 는 회의 를 내일 = 5 -> P = R = 5/7 -> F = 5/7
    # R2: pred bigrams (#P2 는)(는 회의)(회의 를)(를 내일)(내일 로)(로 미룬다), ref (#P2 는)(는 내일)(내일 회의)(회의 를)
    #     (를 취소)(취소 한다); shared (#P2 는)(회의 를) = 2 of 6 each -> F = 2/6 = 1/3
    # RL: LCS #P2 는 회의 를 = 4 -> F = 4/7
    # rouge_sum = (5/7 + 1/3 + 4/7) x 100 = (15 + 7 + 12)/21 x 100 = 3400/21
    scores = utils.process_results({"references": ["#Person2#는 내일 회의를 취소한다."]}, ["#Person2#는 회의를 내일로 미룬다."])
    assert scores["rouge1"] == pytest.approx(5 / 7)
    assert scores["rouge2"] == pytest.approx(1 / 3)
    assert scores["rougeL"] == pytest.approx(4 / 7)
    assert scores["rouge_sum"] == pytest.approx(3400 / 21)
    # letters of the prediction: "Person" (6) + 는 회의를 내일로 미룬다 (10 Hangul) -> 10/16
    assert scores["korean_ratio"] == pytest.approx(10 / 16)


def test_rouge_takes_the_best_reference_per_type() -> None:
    # pred [#P1 은 우산 을 산다] (5)
    # ref A [#P1 은 우산 을 빌린다] (5): R1 4/5 = 0.8; R2 3 of 4 bigrams = 0.75; RL 4/5 = 0.8
    # ref B [#P1 은 편의점 에서 우산 을 산다] (7): R1 P = 5/5, R = 5/7 -> F = 2(5/7)/(12/7) = 10/12;
    #       R2 shared (#P1 은)(우산 을)(을 산다): P = 3/4, R = 3/6 -> F = 0.75/1.25 = 0.6; RL LCS 5 -> F = 10/12
    # best per type: R1 = 10/12 (B), R2 = 0.75 (A), RL = 10/12 (B); rouge_sum = (10 + 9 + 10)/12 x 100 = 2900/12
    doc = {"references": ["#Person1#은 우산을 빌린다.", "#Person1#은 편의점에서 우산을 산다."]}
    scores = utils.process_results(doc, ["#Person1#은 우산을 산다."])
    assert scores["rouge1"] == pytest.approx(10 / 12)
    assert scores["rouge2"] == pytest.approx(0.75)
    assert scores["rougeL"] == pytest.approx(10 / 12)
    assert scores["rouge_sum"] == pytest.approx(2900 / 12)
    single_a = utils.process_results({"references": doc["references"][:1]}, ["#Person1#은 우산을 산다."])
    assert single_a["rouge1"] == pytest.approx(0.8) and single_a["rouge2"] == pytest.approx(0.75)


def test_default_rouge_tokenizer_scores_korean_zero_but_ours_does_not() -> None:
    # Regression: rouge-score's default tokenizer keeps [a-z0-9] only, so a Korean pair sharing words scores 0.
    prediction, reference = "회의를 내일로 미룬다", "내일 회의를 취소한다"
    default = rouge_scorer.RougeScorer(["rouge1"]).score(reference, prediction)["rouge1"].fmeasure
    assert default == 0.0
    # ours: [회의 를 내일 로 미룬다] vs [내일 회의 를 취소 한다]: 3 shared of 5 each -> 3/5
    assert utils.process_results({"references": [reference]}, [prediction])["rouge1"] == pytest.approx(3 / 5)
    explicit = rouge_scorer.RougeScorer(["rouge1"], tokenizer=MorphemeTokenizer()).score(reference, prediction)
    assert explicit["rouge1"].fmeasure == pytest.approx(3 / 5)


def test_korean_ratio_is_left_out_of_the_mean_when_undefined() -> None:
    assert utils.process_results({"references": ["요약"]}, [""])["korean_ratio"] is None
    assert utils.mean_defined([1.0, None, 0.5]) == pytest.approx(0.75)
    assert utils.mean_defined([None]) is None


# --------------------------------------------------------------------------- prompt and clean-up


def test_prompt_is_korean_and_quotes_the_dialogue() -> None:
    doc = {"dialogue": "#Person1#: 안녕?\n#Person2#: 응, 안녕.", "references": ["인사한다."]}
    prompt = utils.doc_to_text(doc)
    assert prompt.startswith("다음 대화를 읽고") and "#Person1#: 안녕?\n#Person2#: 응, 안녕." in prompt
    assert prompt.endswith("요약:")
    assert utils.doc_to_target(doc) == "인사한다."


@pytest.mark.parametrize(("generated", "cleaned"), [
    (" #Person1#은 우산을 산다.", "#Person1#은 우산을 산다."),
    ("요약: #Person1#은 우산을 산다.", "#Person1#은 우산을 산다."),
    ("**요약:** #Person2#가 우산을 빌려준다.", "#Person2#가 우산을 빌려준다."),
    ("## 요약\n\n#Person1#은 우산을 산다.", "#Person1#은 우산을 산다."),
    ("대화 내용을 요약하면 다음과 같습니다:\n\n#Person1#은 우산을 산다.", "#Person1#은 우산을 산다."),
    ("#Person1#: 우산을 살게요.", "우산을 살게요."),
    # a model that goes on with the dialogue: the invented turns go
    ("#Person1#은 우산을 산다.\n#Person2#: 네, 여기요.\n#Person1#: 고마워요.", "#Person1#은 우산을 산다."),
    # one sentence per line is still one summary; mentions of speakers inside sentences stay
    ("#Person1#은 #Person2#에게 묻는다.\n#Person2#는 답한다.", "#Person1#은 #Person2#에게 묻는다. #Person2#는 답한다."),
    ("#Person1#과 #Person2#는 만난다.\n\n이 대화는 약속에 관한 것입니다.", "#Person1#과 #Person2#는 만난다."),
    ("#Person1#은 간다.[대화]\n#Person1#: 다음", "#Person1#은 간다."),
    ("요약하면 #Person1#은 간다.", "요약하면 #Person1#은 간다."),
    ("\n\n", ""),
])
def test_clean_summary(generated: str, cleaned: str) -> None:
    assert utils.clean_summary(generated) == cleaned


# --------------------------------------------------------------------------- user data


def test_reader_reads_the_competition_columns_and_extra_references(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", ["fname", "dialogue", "summary", "summary2", "summary3", "topic"],
                      [ROWS[0][:4] + ["  비를 피한다. "] + ROWS[0][4:], ROWS[1][:4] + [""] + ROWS[1][4:]])
    docs = read_records(path, TASK)
    assert [d["id"] for d in docs] == ["t1", "t2"]
    assert docs[0]["references"] == ["#Person2#가 #Person1#에게 우산을 빌려준다.", "우산을 빌린다.", "비를 피한다."]
    assert docs[1]["references"] == ["#Person1#은 #Person2#에게 연락처를 알려 준다."]
    assert docs[1]["dialogue"] == "#Person1#: 이 번호로 연락 주세요. #PhoneNumber#예요.\n#Person2#: 네, 저장할게요."
    assert [d["topic"] for d in docs] == ["일상", "직장"]


def test_reader_without_optional_columns(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", ["dialogue", "summary"], [[r[1], r[2]] for r in ROWS])
    docs = read_records(path, TASK)
    assert [d["id"] for d in docs] == ["row_0001", "row_0002"]
    assert [d["topic"] for d in docs] == [None, None]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "cp949"])
def test_reader_reads_bom_and_cp949_files(tmp_path: Path, encoding: str) -> None:
    path = _write_csv(tmp_path / f"{encoding}.csv", COLUMNS, ROWS, encoding=encoding)
    if encoding == "cp949":
        with pytest.raises(UnicodeDecodeError):
            path.read_bytes().decode("utf-8")
    else:
        assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    utf8 = _write_csv(tmp_path / "plain.csv", COLUMNS, ROWS)
    assert read_records(path, TASK) == read_records(utf8, TASK)


def test_crlf_file_keeps_turns_on_their_own_lines(tmp_path: Path) -> None:
    path = tmp_path / "crlf.csv"
    text = 'fname,dialogue,summary\r\nc1,"#Person1#: 안녕?\r\n#Person2#: 응.",인사한다.\r\n'
    path.write_bytes(text.encode("utf-8"))
    assert read_records(path, TASK)[0]["dialogue"] == "#Person1#: 안녕?\n#Person2#: 응."


def test_file_without_summary_cannot_be_scored(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "bad.csv", ["fname", "dialogue", "topic"], [[r[0], r[1], r[4]] for r in ROWS])
    with pytest.raises(DataError) as err:
        read_records(path, TASK)
    message = str(err.value)
    assert str(path) in message and "missing column(s) summary" in message and "scored" in message
    assert "\n" not in message


@pytest.mark.parametrize(("rows", "problem"), [
    # the two-turn dialogue spans lines 2-3: the reader names the line where the record ends
    ([["t1", ROWS[0][1], "", "일상"]], "line 3 (fname t1): empty 'summary', so the item cannot be scored"),
    ([["t1", "", "요약", "일상"]], "line 2 (fname t1): empty 'dialogue'"),
    ([ROWS[0][:3] + ["일상"], ROWS[0][:3] + ["일상"]], "duplicate id 't1'"),
])
def test_bad_rows_name_the_line(tmp_path: Path, rows: list[list[str]], problem: str) -> None:
    path = _write_csv(tmp_path / "bad.csv", ["fname", "dialogue", "summary", "topic"], rows)
    with pytest.raises(DataError, match=re.escape(problem)):
        read_records(path, TASK)


def test_cli_rejects_a_file_without_summary_in_one_line(tiny_model: Path, tmp_path: Path) -> None:
    bad = _write_csv(tmp_path / "bad.csv", ["fname", "dialogue", "topic"], [[r[0], r[1], r[4]] for r in ROWS])
    db = tmp_path / "r.db"
    proc = kobench("run", "--model", str(tiny_model), "--tasks", TASK, "--data", f"{TASK}={bad}", "--db", str(db),
                   "--device", "cpu")
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert str(bad) in lines[0] and "missing column(s) summary" in lines[0]
    assert not db.exists()


# --------------------------------------------------------------------------- shipped data


def _raw_split(split: str) -> list[dict[str, str]]:
    with open(TASK_DIR / "data" / f"{split}.csv", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def _char_4grams(text: str) -> set[str]:
    flat = "".join(text.split())
    return {flat[i:i + 4] for i in range(len(flat) - 3)}


def test_task_metadata() -> None:
    info = get_task(TASK)
    assert info.output_type == "generate_until" and info.data_format == TASK
    assert info.main_metric == "rouge_sum,summary" and info.breakdown == ["topic"]
    assert info.scale * 300 == pytest.approx(100)  # rouge_sum is 0-300; the ranking shows 0-100
    assert info.raw["generation_kwargs"]["max_gen_toks"] == 160
    assert "\n\n" not in info.raw["generation_kwargs"]["until"]


def test_shipped_data_schema_counts_and_hygiene() -> None:
    splits = {split: _raw_split(split) for split in ("test", "train", "dev")}
    assert len(splits["test"]) >= 120 and len(splits["train"]) >= 150 and len(splits["dev"]) >= 20
    test_topics = Counter(row["topic"] for row in splits["test"])
    assert len(test_topics) >= 12 and min(test_topics.values()) >= 5
    assert sum(1 for row in splits["test"] if row["summary2"]) >= 30
    prefixes = {"test": r"test_\d{3}", "train": r"train_\d{3}", "dev": r"dev_\d{2}"}
    for split, rows in splits.items():
        assert len({row["fname"] for row in rows}) == len(rows)
        for row in rows:
            assert re.fullmatch(prefixes[split], row["fname"]), row["fname"]
            assert row["summary"] and row["topic"] and row["summary"] != row["summary2"], row["fname"]
            turns = row["dialogue"].split("\n")
            speakers = set()
            for turn in turns:
                match = TURN.match(turn)
                assert match, f"{split} {row['fname']}: {turn!r}"
                speakers.add(int(match.group(1)))
            assert 2 <= len(speakers) <= 4 and speakers == set(range(1, len(speakers) + 1)), row["fname"]
            assert len(turns) >= 4, row["fname"]
            for summary in (row["summary"], row["summary2"]):
                # a summary names only speakers and masks of its own dialogue, in one paragraph
                assert set(MASK.findall(summary)) <= set(MASK.findall(row["dialogue"])), row["fname"]
                assert "\n" not in summary
        docs = read_records(TASK_DIR / "data" / f"{split}.csv", TASK)
        assert len(docs) == len(rows)
    # no dialogue in two splits, and no near-duplicate dialogues anywhere
    everything = [(split, row) for split, rows in splits.items() for row in rows]
    dialogues = [row["dialogue"] for _, row in everything]
    assert len(set(dialogues)) == len(dialogues)
    grams = [_char_4grams(d) for d in dialogues]
    worst = max((len(a & b) / len(a | b), i, j) for (i, a), (j, b) in combinations(enumerate(grams), 2))
    assert worst[0] < 0.6, (everything[worst[1]][1]["fname"], everything[worst[2]][1]["fname"], worst[0])


# --------------------------------------------------------------------------- a run on the tiny model


def test_task_scores_the_tiny_model_with_topic_breakdown(tiny_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    result = run(RunConfig(model=str(tiny_model), tasks=[TASK], limit=2, db=str(db), device="cpu"))
    assert result.status == "done" and result.n[TASK] == 2

    store = open_store(db, readonly=True)
    with store.session() as session:
        samples = session.scalars(select(Sample).where(Sample.task == TASK).order_by(Sample.doc_id)).all()
        scores = {s.metric: (s.value, s.n) for s in session.scalars(select(Score))}
    table = ranking(store)
    store.dispose()
    assert len(samples) == 2

    docs = {d["id"]: d for d in read_records(TASK_DIR / "data" / "test.csv", TASK)}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=MorphemeTokenizer())
    per_topic: dict[str, list[float]] = {}
    sums = []
    for sample in samples:
        doc = docs[sample.item_id]
        summary = sample.metrics.get("_extracted", sample.output)
        assert summary == utils.clean_summary(sample.output)
        assert sample.target == doc["references"][0] and sample.metrics["_topic"] == doc["topic"]
        # independent recomputation: rouge-score with our tokenizer, best over the references per type
        best = {t: max(scorer.score(ref, summary)[t].fmeasure for ref in doc["references"])
                for t in ("rouge1", "rouge2", "rougeL")}
        for t, value in best.items():
            assert sample.metrics[f"{t},summary"] == pytest.approx(value)
        expected_sum = (best["rouge1"] + best["rouge2"] + best["rougeL"]) * 100
        assert sample.metrics["rouge_sum,summary"] == pytest.approx(expected_sum)
        per_topic.setdefault(doc["topic"], []).append(expected_sum)
        sums.append(expected_sum)

    assert scores["rouge_sum,summary"][0] == pytest.approx(sum(sums) / len(sums))
    assert result.scores[TASK]["rouge_sum,summary"] == pytest.approx(sum(sums) / len(sums))
    for topic, values in per_topic.items():
        value, n = scores[f"rouge_sum,summary[topic={topic}]"]
        assert value == pytest.approx(sum(values) / len(values)) and n == len(values)
    assert any(name.startswith("korean_ratio,summary[topic=") for name in scores)
    # the ranking shows rouge_sum on 0-100: the mean ROUGE F1 x 100
    assert table[0].scores[TASK] == pytest.approx(round(sum(sums) / len(sums) / 3, 2))
