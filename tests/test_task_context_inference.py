"""ko_context_inference: shipped data hygiene, the particle-aware question, `--refined` steps, lm-eval runs on the
tiny model, hard-voting ensembles and the CLI's user-data errors."""
from __future__ import annotations

import difflib
import importlib.util
import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from harness.config import RunConfig
from harness.ensemble import create_ensemble, ensemble_identity, parse_run_ids, vote
from harness.errors import KobenchError
from harness.korean import with_euro, with_particle
from harness.ranking import ranking
from harness.runner import run, stratified_indices
from harness.store import open_store, records
from harness.store.schema import Model, Run, Sample, Score
from harness.taskdata import load_splits, read_records
from harness.taskdata.context_inference import (
    CATEGORIES, collapse_punctuation, collapse_whitespace, drop_empty_turns, drop_symbols, expand_shorthand,
    is_greeting_only, is_jamo_only, is_symbols_only, merge_same_speaker, normalize_utterance,
    refine_context_inference, rename_placeholders)
from tests.conftest import REPO, file_digest, kobench, last_json_line
from tests.test_runner import _reference_choice

TASK = "ko_context_inference"
TASK_DIR = REPO / "tasks" / TASK
SPLITS = {"test": 200, "train": 150, "dev": 25}


def _raw(split: str) -> list[dict[str, Any]]:
    text = (TASK_DIR / "data" / f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def _utils() -> Any:
    spec = importlib.util.spec_from_file_location("ko_context_inference_utils", TASK_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _conversation_text(item: dict[str, Any]) -> str:
    return "\n".join(turn["utterance"] for turn in item["input"]["conversation"])


# --- shipped data ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", list(SPLITS))
def test_split_schema_counts_and_balance(split: str) -> None:
    docs = read_records(TASK_DIR / "data" / f"{split}.jsonl", TASK)  # the reader validates the schema
    assert len(docs) == SPLITS[split]
    per_category = Counter(d["category"] for d in docs)
    assert set(per_category) == set(CATEGORIES)
    assert len(set(per_category.values())) == 1  # every category equally often
    if split == "test":
        assert all(count == 40 for count in per_category.values())
    positions = Counter(d["label"] for d in docs)
    for index in range(3):
        assert 0.30 <= positions[index] / len(docs) <= 0.37, (split, positions)
    for doc in docs:
        assert len(doc["choices"]) == 3 and len(set(doc["choices"])) == 3
        assert set(doc["reference_id"]) <= {t["utterance_id"] for t in doc["conversation"]}


def test_ids_unique_and_no_conversation_in_two_splits() -> None:
    items = {split: _raw(split) for split in SPLITS}
    ids = [item["id"] for split in items for item in items[split]]
    assert len(ids) == len(set(ids))
    conversations = {split: {_conversation_text(i) for i in items[split]} for split in items}
    utterance_ids = {split: {t["utterance_id"] for i in items[split] for t in i["input"]["conversation"]}
                     for split in items}
    for a, b in itertools.combinations(SPLITS, 2):
        assert not conversations[a] & conversations[b], (a, b)
        assert not utterance_ids[a] & utterance_ids[b], (a, b)


def test_no_near_duplicates_across_splits() -> None:
    items = {split: _raw(split) for split in SPLITS}
    for a, b in itertools.combinations(SPLITS, 2):
        for x, y in itertools.product({_conversation_text(i) for i in items[a]},
                                      {_conversation_text(i) for i in items[b]}):
            matcher = difflib.SequenceMatcher(None, x, y)
            assert matcher.quick_ratio() < 0.8 or matcher.ratio() < 0.8, (x[:40], y[:40])
        golds_b = [i["input"][i["output"]] for i in items[b]]
        for gold in (i["input"][i["output"]] for i in items[a]):
            close = difflib.get_close_matches(gold, golds_b, n=1, cutoff=0.85)
            assert not close, (gold, close)


@pytest.mark.parametrize("split", list(SPLITS))
def test_correct_option_is_not_given_away_by_length(split: str) -> None:
    items = _raw(split)
    strictly_longest = 0
    longest_guess = 0.0  # expected accuracy of "pick a longest option at random"
    for item in items:
        lengths = [len(item["input"][f"inference_{i}"]) for i in (1, 2, 3)]
        gold = int(item["output"][-1]) - 1
        longest = [i for i, n in enumerate(lengths) if n == max(lengths)]
        strictly_longest += longest == [gold]
        longest_guess += (gold in longest) / len(longest)
    assert strictly_longest / len(items) <= 0.40
    assert longest_guess / len(items) <= 0.40


# --- the question's particle ----------------------------------------------------------------------------------------

def test_with_euro_and_with_particle() -> None:
    assert with_euro("원인") == "원인으로"  # final ㄴ
    assert with_euro("반응") == "반응으로"  # final ㅇ
    assert with_euro("후행사건") == "후행사건으로"
    assert with_euro("전제") == "전제로"  # no final consonant
    assert with_euro("동기") == "동기로"
    assert with_euro("결말") == "결말로"  # final ㄹ takes 로
    assert with_euro("서울") == "서울로"
    assert with_euro("API") == "API(으)로"
    assert with_particle("원인", "은", "는") == "원인은"
    assert with_particle("전제", "은", "는") == "전제는"
    assert with_particle("서울", "이", "가") == "서울이"  # ㄹ is a consonant for 이/가
    assert with_particle("반응", "을", "를") == "반응을"
    assert with_particle("LLM", "은", "는") == "LLM은(는)"
    questions = {c: _utils().question(c) for c in CATEGORIES}
    assert questions["원인"] == "위 대화의 원인으로 올바른 지문은?"
    assert questions["전제"] == "위 대화의 전제로 올바른 지문은?"
    assert questions["후행사건"] == "위 대화의 후행사건으로 올바른 지문은?"


# --- `--refined` steps ----------------------------------------------------------------------------------------------

def test_collapse_whitespace() -> None:
    assert collapse_whitespace("  아니\n\n그게   아니라\t진짜 ") == "아니 그게 아니라 진짜"


def test_expand_shorthand() -> None:
    assert expand_shorthand("ㅇㅋ 그럼 죽집 ㄱㄱ") == "오케이 그럼 죽집 고고"
    assert expand_shorthand("ㅇㅇ 알겠어") == "응 알겠어"
    assert expand_shorthand("ㄴㄴ 괜찮아") == "노노 괜찮아"
    assert expand_shorthand("늦어서 ㅈㅅ") == "늦어서 죄송"
    assert expand_shorthand("ㄱㅅㄱㅅ") == "감사감사"  # repeats of one entry
    assert expand_shorthand("ㅋㅋㅋ ㅠㅠ ㅎㅎ") == "ㅋㅋㅋ ㅠㅠ ㅎㅎ"  # laughter and crying are not shorthand
    assert expand_shorthand("ㅇㅋㅋ") == "ㅇㅋㅋ"  # a run that is not one entry repeated stays


def test_collapse_punctuation() -> None:
    assert collapse_punctuation("그래서.......") == "그래서..."
    assert collapse_punctuation("진짜?????") == "진짜??"
    assert collapse_punctuation("대박!!!!!") == "대박!!"
    assert collapse_punctuation("음... 정말?? 좋아!!") == "음... 정말?? 좋아!!"  # already short: unchanged


def test_drop_symbols() -> None:
    assert drop_symbols("안녕하세요~~ ^^") == "안녕하세요 "
    assert drop_symbols("(웃음) 그래; 알았어 @민수 _ / -") == "웃음 그래 알았어 민수   "
    # between digits or Latin letters they carry meaning and stay
    assert drop_symbols("12:30에 D-30, 3/4 정도") == "12:30에 D-30, 3/4 정도"


def test_normalize_utterance_runs_the_text_steps_in_order() -> None:
    assert normalize_utterance("ㅇㅋ~~   7시에   봐요!!!!! ^^") == "오케이 7시에 봐요!!"


def test_rename_placeholders() -> None:
    assert rename_placeholders("name1아 저번에 빌려간 돈") == "인물1아 저번에 빌려간 돈"
    assert rename_placeholders("나 어제 name12한테 고백함, Name2도 알아") == "나 어제 인물12한테 고백함, 인물2도 알아"
    assert rename_placeholders("username1") == "username1"  # only the placeholder itself


def test_utterance_filters() -> None:
    assert is_greeting_only("안녕하세요~") and is_greeting_only("ㅎㅇ") and is_greeting_only("하이!!")
    assert not is_greeting_only("안녕하세요~ 이 책 대출하려고요.")
    assert is_jamo_only("ㅠㅠ") and is_jamo_only("ㅋㅋㅋ!") and not is_jamo_only("ㅋㅋ 진짜?")
    assert not is_jamo_only("^^")
    assert is_symbols_only("^^") and is_symbols_only("...") and is_symbols_only("")
    assert not is_symbols_only("ㅠ") and not is_symbols_only("OK")


def test_drop_empty_turns_keeps_reference_targets() -> None:
    turns = [{"speaker": 1, "utterance": u, "utterance_id": str(i)}
             for i, u in enumerate(["안녕하세요", "ㅋㅋㅋ", "^^", "밥 먹었어?", "ㅠㅠ"])]
    kept = drop_empty_turns(turns, targets={"4"})
    assert [t["utterance_id"] for t in kept] == ["3", "4"]


def test_merge_same_speaker_remaps_reference_ids() -> None:
    turns = [{"speaker": s, "utterance": u, "utterance_id": i} for s, u, i in
             [(1, "야", "a"), (1, "뭐 해?", "b"), (2, "그냥", "c"), (1, "나와", "d"), (1, "빨리", "e")]]
    merged, refs = merge_same_speaker(turns, ["b", "e", "d"])
    assert merged == [{"speaker": 1, "utterance": "야 뭐 해?", "utterance_id": "a"},
                      {"speaker": 2, "utterance": "그냥", "utterance_id": "c"},
                      {"speaker": 1, "utterance": "나와 빨리", "utterance_id": "d"}]
    assert refs == ["a", "d"]  # b -> a, e -> d, then d again: duplicates removed
    assert turns[0]["utterance"] == "야"  # the input is not modified


def test_refine_document_end_to_end() -> None:
    doc = {"id": "x1", "category": "원인", "label": 1, "reference_id": ["x1.4", "x1.5"],
           "choices": ["name1은 화가 났다.", "화자2는 배가 고팠다.", "name2가 늦었다."],
           "conversation": [
               {"speaker": 1, "utterance": "안녕하세요~", "utterance_id": "x1.1"},
               {"speaker": 2, "utterance": "name1아   밥 먹었어??????", "utterance_id": "x1.2"},
               {"speaker": 2, "utterance": "ㅋㅋㅋ", "utterance_id": "x1.3"},
               {"speaker": 1, "utterance": "ㄴㄴ 아직....", "utterance_id": "x1.4"},
               {"speaker": 1, "utterance": "ㅠㅠ", "utterance_id": "x1.5"},
               {"speaker": 2, "utterance": "^^", "utterance_id": "x1.6"}]}
    refined = refine_context_inference(doc)
    # greeting x1.1, jamo-only x1.3 and symbols-only x1.6 go; the jamo-only x1.5 is a target and stays, merged into x1.4
    assert refined["conversation"] == [
        {"speaker": 2, "utterance": "인물1아 밥 먹었어??", "utterance_id": "x1.2"},
        {"speaker": 1, "utterance": "노노 아직... ㅠㅠ", "utterance_id": "x1.4"}]
    assert refined["reference_id"] == ["x1.4"]
    assert refined["choices"] == ["인물1은 화가 났다.", "화자2는 배가 고팠다.", "인물2가 늦었다."]
    assert {k: refined[k] for k in ("id", "category", "label")} == {"id": "x1", "category": "원인", "label": 1}


def test_refined_shipped_data_keeps_targets_and_is_stable() -> None:
    for split in SPLITS:
        for doc in read_records(TASK_DIR / "data" / f"{split}.jsonl", TASK):
            refined = refine_context_inference(doc)
            ids = [t["utterance_id"] for t in refined["conversation"]]
            assert refined["reference_id"] and set(refined["reference_id"]) <= set(ids)
            assert set(ids) <= {t["utterance_id"] for t in doc["conversation"]}
            assert refined["label"] == doc["label"] and len(refined["choices"]) == 3
            assert refine_context_inference(refined) == refined  # a second pass changes nothing


def test_load_splits_applies_the_refiner_only_when_asked() -> None:
    raw = load_splits(TASK)
    refined = load_splits(TASK, kobench_refined=True)
    assert {s: len(raw[s]) for s in raw} == {s: len(refined[s]) for s in refined} == SPLITS
    assert refined["test"][0] == refine_context_inference(raw["test"][0])
    assert any("ㅇㅋ" in t["utterance"] for t in raw["test"][0]["conversation"])
    assert not any("ㅇㅋ" in t["utterance"] for t in refined["test"][0]["conversation"])


# --- lm-eval runs on the tiny model ---------------------------------------------------------------------------------

@pytest.mark.parametrize("refined", [False, True], ids=["raw", "refined"])
def test_both_variants_score_the_tiny_model(refined: bool, tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    db = tmp_path / "r.db"
    result = run(RunConfig(model=str(tiny_model), tasks=[TASK, f"{TASK}_gen"], limit=5, db=str(db), device="cpu",
                           batch_size="8", refined=refined))
    assert result.status == "done" and result.n == {TASK: 5, f"{TASK}_gen": 5}

    utils = _utils()
    docs = read_records(TASK_DIR / "data" / "test.jsonl", TASK)
    chosen = [docs[i] for i in stratified_indices(docs, 5, "category")]
    assert {d["category"] for d in chosen} == set(CATEGORIES)  # one item per category
    if refined:
        raw_prompts = [utils.doc_to_text(d) for d in chosen]
        chosen = [refine_context_inference(d) for d in chosen]
        assert all(utils.doc_to_text(d) != raw for d, raw in zip(chosen, raw_prompts))  # every prompt is refined
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    store = open_store(db, readonly=True)
    with store.session() as session:
        def samples(task: str) -> list[Sample]:
            return session.scalars(select(Sample).where(Sample.task == task).order_by(Sample.doc_id)).all()

        scores = {(s.task, s.metric): s.value for s in session.scalars(select(Score))}
        mc = samples(TASK)
        assert [s.prompt for s in mc] == [utils.doc_to_text(d) for d in chosen]
        expected = [_reference_choice(model, tokenizer, utils.doc_to_text(d), d["choices"]) for d in chosen]
        assert [int(s.output) for s in mc] == expected
        assert scores[(TASK, "acc")] == pytest.approx(sum(e == d["label"] for e, d in zip(expected, chosen)) / 5)
        assert {s.metrics["_category"] for s in mc} == set(CATEGORIES)
        first = chosen[0]
        assert scores[(TASK, f"acc[category={first['category']}]")] == float(expected[0] == first["label"])
        gen = samples(f"{TASK}_gen")
        assert [s.prompt for s in gen] == [utils.doc_to_text_gen(d) for d in chosen]
        letters = []
        for s in gen:  # the YAML's filter, applied by hand: the first standalone A/B/C
            found = re.search(r"(?<![A-Za-z])([ABC])(?![A-Za-z])", s.output)
            letters.append(found.group(1) if found else "[invalid]")
        assert scores[(f"{TASK}_gen", "exact_match,letter")] == pytest.approx(
            sum(letter == "ABC"[d["label"]] for letter, d in zip(letters, chosen)) / 5)
    store.dispose()


def test_refined_is_part_of_the_fingerprint() -> None:
    from harness.runner import _fingerprint, plan_tasks

    config = RunConfig(model="m", tasks=[TASK], limit=5)
    plan = plan_tasks(config)[0]
    assert _fingerprint(plan, "m", config, False) != _fingerprint(plan, "m", RunConfig(**{**config.to_dict(),
                                                                                          "refined": True}), False)


# --- ensembles ------------------------------------------------------------------------------------------------------

GOLD = [0, 1, 2, 0, 1, 2]
GROUPS = ["원인", "원인", "전제", "전제", "동기", "동기"]
# accuracies against GOLD: A 3/6 (docs 0,2,3), B 2/6 (docs 0,3), C 4/6 (docs 0,1,4,5)
ANSWERS = {"A": [0, 2, 2, 0, 0, 0], "B": [0, 2, 1, 0, 2, 1], "C": [0, 1, 0, 2, 1, 2]}


def _fixture_run(store: Any, name: str, task: str, outputs: list[str], targets: list[str],
                 extracted: list[str | None] | None = None, hardware: str = "cpu-test", data_hash: str = "h-test",
                 status: str = "done", doc_ids: list[int] | None = None) -> int:
    """A finished run of model `name` with hand-made samples, written with the store's own helpers."""
    model_id = records.get_or_create_model(store, f"fixture-{name}", kind="model", name=name, source=f"test:{name}")
    run_id = records.create_run(store, model_id, hardware=hardware)
    samples = []
    for i, doc_id in enumerate(doc_ids or range(len(outputs))):
        metrics: dict[str, Any] = {"_category": GROUPS[doc_id % len(GROUPS)]}
        if extracted and extracted[i] is not None:
            metrics["_extracted"] = extracted[i]
        samples.append({"doc_id": doc_id, "item_id": f"item-{doc_id}", "prompt": f"prompt {doc_id}",
                        "output": outputs[i], "target": targets[i], "metrics": metrics})
    acc = sum(o == t for o, t in zip(outputs, targets)) / len(outputs)  # as the runner would have scored it
    records.write_task(store, run_id, records.TaskOutcome(task=task, task_version="1.0", data_hash=data_hash,
                                                          fingerprint=f"fp-{name}-{run_id}", n=len(samples),
                                                          scores=[{"metric": "acc", "value": acc}], samples=samples))
    records.finish_run(store, run_id, status)
    return run_id


def test_vote_majority_ties_and_abstentions() -> None:
    assert vote([1, 1, 2], tie_order=[2, 0, 1]) == 1  # majority beats the best member
    assert vote([0, 1, 2], tie_order=[2, 0, 1]) == 2  # three-way tie: member 2 is the best
    assert vote([0, 1, None], tie_order=[2, 1, 0]) == 1  # the best (2) abstained; next best (1) voted in the tie
    assert vote([None, None, None], tie_order=[0, 1, 2]) is None


def test_ensemble_votes_stores_and_ranks(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    store = open_store(db)
    targets = [str(g) for g in GOLD]
    run_ids = [_fixture_run(store, name, TASK, [str(a) for a in answers], targets)
               for name, answers in ANSWERS.items()]
    store.dispose()

    result = create_ensemble(run_ids, TASK, str(db))
    # tie order by accuracy: C (4/6), A (3/6), B (2/6)
    # doc 0: 0,0,0 -> 0 (gold 0, right)      doc 1: 2,2,1 -> 2 (gold 1, wrong)
    # doc 2: 2,1,0 tie -> C's 0 (gold 2, wrong; A, listed first, would have been right)
    # doc 3: 0,0,2 -> 0 (right)              doc 4: 0,2,1 tie -> C's 1 (right)   doc 5: 0,1,2 tie -> C's 2 (right)
    expected_outputs = ["0", "2", "0", "0", "1", "2"]
    assert result.scores["acc"] == pytest.approx(4 / 6)
    assert result.scores["acc[category=원인]"] == pytest.approx(1 / 2)
    assert result.scores["acc[category=전제]"] == pytest.approx(1 / 2)
    assert result.scores["acc[category=동기]"] == pytest.approx(1.0)
    assert [m["accuracy"] for m in result.members] == pytest.approx([3 / 6, 2 / 6, 4 / 6])

    store = open_store(db, readonly=True)
    with store.session() as session:
        run_row = session.get(Run, result.run_id)
        assert (run_row.kind, run_row.status, run_row.hardware) == ("ensemble", "done", "cpu-test")
        model_row = session.get(Model, run_row.model_id)
        assert model_row.kind == "ensemble" and model_row.identity_key == ensemble_identity(run_ids)
        assert [m["run_id"] for m in model_row.details["members"]] == run_ids
        samples = session.scalars(select(Sample).where(Sample.run_id == result.run_id).order_by(Sample.doc_id)).all()
        assert [s.output for s in samples] == expected_outputs
        assert [s.target for s in samples] == targets
        assert [s.metrics["acc"] for s in samples] == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
        assert samples[2].metrics["votes"] == [2, 1, 0]
    rows = ranking(store)
    store.dispose()
    ensemble_row = next(r for r in rows if r.kind == "ensemble")
    assert ensemble_row.scores[TASK] == pytest.approx(66.67) and ensemble_row.run_ids == [result.run_id]
    assert {r.model: r.scores[TASK] for r in rows if r.kind == "model"} == pytest.approx(
        {"A": 50.0, "B": 33.33, "C": 66.67})

    # the same runs in another order are the same ensemble model, with the same votes
    again = create_ensemble(list(reversed(run_ids)), TASK, str(db))
    assert again.model_id == result.model_id and again.run_id != result.run_id
    assert again.scores == result.scores


def test_ensemble_of_generative_runs_uses_extracted_letters(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    task = f"{TASK}_gen"
    targets = ["A", "B", "C"]
    store = open_store(db)
    # X: A, B, none (2/3)   Y: B, C, C (1/3)   Z: none, B, A (1/3)
    x = _fixture_run(store, "X", task, ["A", "정답은 B", "모르겠어요"], targets, [None, "B", "[invalid]"])
    y = _fixture_run(store, "Y", task, ["B", "C", "C"], targets, hardware="gpu")
    z = _fixture_run(store, "Z", task, ["음...", "B", "A"], targets, ["[invalid]", None, None])
    store.dispose()
    result = create_ensemble([x, y, z], task, str(db))
    # doc 0: A, B, - tie -> X (best) says A: right.  doc 1: B, C, B -> B: right.
    # doc 2: -, C, A tie -> X abstains; Y and Z both 1/3, Y has the lower run id and says C: right.
    assert result.hardware == "mixed"
    assert result.scores["exact_match,letter"] == result.scores["acc"] == pytest.approx(1.0)
    assert create_ensemble([z, y, x], task, str(db)).scores == result.scores  # Z listed first changes nothing
    store = open_store(db, readonly=True)
    with store.session() as session:
        samples = session.scalars(select(Sample).where(Sample.run_id == result.run_id).order_by(Sample.doc_id)).all()
        assert [(s.output, s.target) for s in samples] == [("0", "0"), ("1", "1"), ("2", "2")]
        assert samples[0].metrics["votes"] == [0, 1, None]
    store.dispose()


def test_ensemble_refuses_runs_that_cannot_vote_together(tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    store = open_store(db)
    targets = [str(g) for g in GOLD]
    a, b = (_fixture_run(store, n, TASK, [str(x) for x in ANSWERS[n]], targets) for n in ("A", "B"))
    other_data = _fixture_run(store, "C", TASK, ["0"] * 6, targets, data_hash="h-other")
    fewer_items = _fixture_run(store, "D", TASK, ["0"] * 5, targets[:5])
    failed = _fixture_run(store, "E", TASK, ["0"] * 6, targets, status="failed")
    other_task = _fixture_run(store, "F", "ko_other_task", ["0"] * 6, targets)
    store.dispose()
    before = file_digest(db)
    cases = {
        (a, other_data): f"runs {a} and {other_data} scored different {TASK} data",
        (a, fewer_items): f"runs {a} and {fewer_items} scored different {TASK} items",
        (a, failed): f"run {failed} is failed, not done",
        (a, other_task): f"run {other_task} has no finished {TASK} result",
        (a, 999): "run 999 is not in",
    }
    for runs, message in cases.items():
        with pytest.raises(KobenchError, match=re.escape(message)):
            create_ensemble([*runs, b], TASK, str(db))
    assert file_digest(db) == before
    with pytest.raises(KobenchError, match="at least two runs"):
        parse_run_ids(str(a))
    with pytest.raises(KobenchError, match="listed twice"):
        parse_run_ids(f"{a},{b},{a}")


def test_ensemble_cli(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    store = open_store(db)
    targets = [str(g) for g in GOLD]
    run_ids = [_fixture_run(store, name, TASK, [str(a) for a in answers], targets) for name, answers in ANSWERS.items()]
    failed = _fixture_run(store, "E", TASK, ["0"] * 6, targets, status="failed")
    store.dispose()

    before = file_digest(db)
    proc = kobench("ensemble", "--runs", f"{run_ids[0]},{failed}", "--task", TASK, "--db", str(db))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --runs: run {failed} is failed, not done: only finished "
                                                "runs can vote"]
    assert file_digest(db) == before

    proc = kobench("ensemble", "--runs", ",".join(map(str, run_ids)), "--task", TASK, "--db", str(db), "--json")
    assert proc.returncode == 0, proc.stderr
    out = last_json_line(proc.stdout)
    assert out["scores"]["acc"] == pytest.approx(4 / 6) and out["n"] == 6
    store = open_store(db, readonly=True)
    assert any(row.kind == "ensemble" and row.run_ids == [out["run_id"]] for row in ranking(store))
    store.dispose()


# --- user data errors through the CLI -------------------------------------------------------------------------------

def _item(**changes: Any) -> dict[str, Any]:
    item = _raw("dev")[0]
    item = json.loads(json.dumps(item))
    item["id"] = "user-1"
    for key, value in changes.items():
        if key == "output":
            item["output"] = value
        else:
            item["input"][key] = value
    return item


def test_user_data_as_json_list_or_jsonl(tmp_path: Path) -> None:
    items = [_item(), {**_item(), "id": "user-2"}]
    as_list = tmp_path / "items.json"
    as_list.write_text(json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
    as_lines = tmp_path / "items.jsonl"
    as_lines.write_text("\n".join(json.dumps(i, ensure_ascii=False) for i in items) + "\n", encoding="utf-8")
    assert read_records(as_list, TASK) == read_records(as_lines, TASK)
    assert [d["id"] for d in read_records(as_list, TASK)] == ["user-1", "user-2"]


@pytest.mark.parametrize("case", ["malformed", "category", "output", "reference", "json-list"])
def test_bad_user_data_is_one_line_exit_2_nothing_stored(case: str, tiny_model: Path, tmp_path: Path) -> None:
    good = {**_item(), "id": "user-0"}
    bad, expected = {
        "malformed": ('{"id": "user-1", "input": {', "line 2: invalid JSON"),
        "category": (_item(category="결과"), "line 2 (id user-1): unknown category '결과'"),
        "output": (_item(output="inference_4"), "line 2 (id user-1): output 'inference_4' is not an answer key"),
        "reference": (_item(reference_id=["nope.9"]),
                      "line 2 (id user-1): reference_id 'nope.9' is not an utterance_id"),
        "json-list": (_item(category="결과"), "item 2 (id user-1): unknown category '결과'"),
    }[case]
    if case == "json-list":
        path = tmp_path / "mine.json"
        path.write_text(json.dumps([good, bad], ensure_ascii=False, indent=2), encoding="utf-8")
    else:
        path = tmp_path / "mine.jsonl"
        lines = [json.dumps(good, ensure_ascii=False), bad if isinstance(bad, str) else json.dumps(bad, ensure_ascii=False)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    db = tmp_path / "results.db"
    if case == "reference":  # an existing store stays byte-identical
        open_store(db).dispose()
    before = file_digest(db)
    proc = kobench("run", "--model", str(tiny_model), "--tasks", TASK, "--data", f"{TASK}={path}",
                   "--db", str(db))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ")
    assert expected in lines[0]
    assert file_digest(db) == before  # None == None: no store was created
