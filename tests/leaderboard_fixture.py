"""A hand-made results store for the leaderboard tests: several models, an adapter on a base, an ensemble, a failed run.

Written with harness.store.records like the runner writes, with per-sample values typed in below, so a test can
compute what the dashboard must show (e.g. accuracy = mean of the 0/1 list x 100) without the leaderboard's code.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.store import open_store
from harness.store.records import TaskOutcome, create_run, finish_run, get_or_create_model, write_task
from harness.taskdata.md_translation import prompt_text

GPU = "rtx4090-24gb"
CPU = "cpu"

# ko_context_inference (multiple choice, main metric acc): 10 items, the category of each and the gold choice.
CTX_CATEGORIES = ["원인", "동기", "원인", "반응", "동기", "원인", "반응", "동기", "원인", "반응"]
CTX_GOLD = [0, 2, 1, 1, 0, 2, 0, 1, 2, 0]
CTX_CORRECT = {
    "alpha-7b": [1, 1, 1, 0, 1, 1, 0, 1, 1, 1],
    "beta-1.3b": [1, 0, 1, 0, 1, 0, 0, 1, 1, 0],
    "alpha-7b+ko-lora": [1, 1, 1, 1, 1, 1, 0, 1, 1, 1],
    "vote3": [1, 1, 1, 0, 1, 1, 1, 1, 0, 1],
    "beta-1.3b@cpu": [0, 0, 1, 0, 1, 0, 0, 1, 1, 0],
}
# ko_honorific (generation, main metric polite_rate): 6 answers, 1 = stayed in 존댓말.
HON_POLITE = {
    "alpha-7b": [1, 1, 0, 1, 1, 0],
    "beta-1.3b": [1, 0, 0, 1, 0, 0],
    "alpha-7b+ko-lora": [1, 1, 1, 1, 1, 0],
}
HON_TOPICS = ["일상", "업무", "일상", "여행", "업무", "여행"]
HON_QUESTIONS = ["주말에 뭐 했어?", "회의 자료 다 만들었어?", "저녁 뭐 먹을 거야?", "제주도 가 봤어?",
                 "보고서 언제 끝나?", "기차표 예매했어?"]
# ko_md_translation (generation, main metric corpus chrF, scale 1): the stored corpus score and the per-item
# sentence chrF values (`chrf_sentence`) that stand in for it in intervals.
MD_CORPUS_CHRF = {"alpha-7b": 52.4, "beta-1.3b": 31.0, "alpha-7b+ko-lora": 58.8}
MD_SENTENCE_CHRF = {
    "alpha-7b": [48.0, 61.0, 55.5, 40.5],
    "beta-1.3b": [25.0, 38.0, 30.0, 29.0],
    "alpha-7b+ko-lora": [60.0, 62.0, 51.0, 57.0],
}
MD_SOURCES = [
    "# 설치\n\n`pip install kobench` 로 설치합니다.",
    "## 사용법\n\n- 모델을 고릅니다\n- 과제를 실행합니다",
    "표는 아래와 같습니다.\n\n| 이름 | 값 |\n|---|---|\n| a | 1 |",
    "**주의**: 설정 파일은 [문서](https://example.com)를 참고하세요.",
]
MD_REFERENCES = [
    "# Installation\n\nInstall it with `pip install kobench`.",
    "## Usage\n\n- Pick a model\n- Run the tasks",
    "The table is below.\n\n| Name | Value |\n|---|---|\n| a | 1 |",
    "**Note**: see the [docs](https://example.com) for the config file.",
]
# A model output that would be markup if rendered: the Samples page must show it as text.
HOSTILE_OUTPUT = "<script>window.pwned = 1</script><b>Usage</b>\n\n- Pick a model\n- Run the tasks"

PARAMS = {"alpha-7b": 7_240_000_000, "beta-1.3b": 1_310_000_000}
PEAK_MB = {"alpha-7b": 15210.0, "beta-1.3b": 2950.0, "alpha-7b+ko-lora": 6120.0, "beta-1.3b@cpu": 3400.0}
GEN_TPS = {"alpha-7b": 41.5, "beta-1.3b": 120.0, "alpha-7b+ko-lora": 35.0, "beta-1.3b@cpu": 9.5}
FAILED_ERROR = "OutOfMemoryError: CUDA out of memory while loading gamma-13b (tried to allocate 26.0 GiB)"


@dataclass
class LeaderboardFixture:
    db: Path
    run_ids: dict[str, int] = field(default_factory=dict)  # key -> run id (keys as in the dicts above, + "gamma-13b")
    model_ids: dict[str, int] = field(default_factory=dict)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _breakdown_scores(metric: str, field_name: str, groups: list[str], values: list[float]) -> list[dict[str, Any]]:
    by_group: dict[str, list[float]] = defaultdict(list)
    for group, value in zip(groups, values):
        by_group[group].append(value)
    return [{"metric": f"{metric}[{field_name}={g}]", "value": _mean(v), "stderr": None, "n": len(v)}
            for g, v in sorted(by_group.items())]


def _context_outcome(key: str) -> TaskOutcome:
    correct = CTX_CORRECT[key]
    samples = []
    for i, (ok, gold, category) in enumerate(zip(correct, CTX_GOLD, CTX_CATEGORIES)):
        chosen = gold if ok else (gold + 1) % 3
        samples.append({"doc_id": i, "item_id": f"ctx-fx-{i:02d}", "prompt": f"대화 {i}: 다음 발화의 {category}은?",
                        "output": str(chosen), "target": str(gold),
                        "metrics": {"_category": category, "acc": float(ok), "acc_norm": float(ok)}})
    acc = _mean(correct)
    scores = [{"metric": "acc", "value": acc, "stderr": 0.1, "n": len(correct)},
              {"metric": "acc_norm", "value": acc, "stderr": 0.1, "n": len(correct)},
              *_breakdown_scores("acc", "category", CTX_CATEGORIES, correct)]
    return TaskOutcome(task="ko_context_inference", task_version="1.0", data_hash="c0ffee" * 10 + "0001",
                       fingerprint=f"fp-ctx-{key}", n=len(correct), scores=scores, samples=samples,
                       wall_s=12.0, peak_mem_mb=PEAK_MB.get(key), gen_tokens_per_s=GEN_TPS.get(key))


def _honorific_outcome(key: str) -> TaskOutcome:
    polite = HON_POLITE[key]
    samples = []
    for i, (ok, topic, question) in enumerate(zip(polite, HON_TOPICS, HON_QUESTIONS)):
        answer = "네, 주말에 가족이랑 공원에 다녀왔어요." if ok else "응, 그냥 집에서 쉬었어."
        samples.append({"doc_id": i, "item_id": f"hon-fx-{i:02d}", "prompt": f"질문: {question}\n답변:",
                        "output": answer, "target": "", "metrics": {"_topic": topic, "polite_rate": float(ok),
                                                                    "korean_ratio": 0.9}})
    scores = [{"metric": "polite_rate", "value": _mean(polite), "stderr": None, "n": len(polite)},
              {"metric": "korean_ratio", "value": 0.9, "stderr": None, "n": len(polite)},
              *_breakdown_scores("polite_rate", "topic", HON_TOPICS, polite)]
    return TaskOutcome(task="ko_honorific", task_version="1.0", data_hash="beef" * 16, fingerprint=f"fp-hon-{key}",
                       n=len(polite), scores=scores, samples=samples, wall_s=30.0, peak_mem_mb=PEAK_MB.get(key),
                       gen_tokens_per_s=GEN_TPS.get(key))


def _translation_outcome(key: str) -> TaskOutcome:
    sentence = MD_SENTENCE_CHRF[key]
    samples = []
    for i, (source, reference, chrf) in enumerate(zip(MD_SOURCES, MD_REFERENCES, sentence)):
        output = HOSTILE_OUTPUT if (key == "alpha-7b+ko-lora" and i == 1) else reference.replace("the", "a")
        samples.append({"doc_id": i, "item_id": f"md-fx-{i:02d}", "prompt": prompt_text({"source": source}),
                        "output": output, "target": reference,
                        "metrics": {"_style": "guide", "chrf_sentence": chrf, "md_preservation": 1.0}})
    scores = [{"metric": "chrf", "value": MD_CORPUS_CHRF[key], "stderr": None, "n": len(sentence)},
              {"metric": "bleu", "value": MD_CORPUS_CHRF[key] / 2, "stderr": None, "n": len(sentence)},
              {"metric": "chrf_sentence", "value": _mean(sentence), "stderr": None, "n": len(sentence)}]
    return TaskOutcome(task="ko_md_translation", task_version="1.0", data_hash="d00d" * 16,
                       fingerprint=f"fp-md-{key}", n=len(sentence), scores=scores, samples=samples, wall_s=50.0,
                       peak_mem_mb=PEAK_MB.get(key), gen_tokens_per_s=GEN_TPS.get(key))


def _provenance(tasks: list[str], hardware: str) -> dict[str, Any]:
    return {"hardware": hardware, "config": {"limit": None, "device": "cuda" if hardware == GPU else "cpu"},
            "versions": {"kobench": "0.1.0", "lm_eval": "0.4.13", "transformers": "4.57.1", "torch": "2.8.0"},
            "seeds": {"random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234},
            "generation_config": {t: {"max_gen_toks": 512, "until": ["</s>"], "do_sample": False}
                                  for t in tasks if t != "ko_context_inference"},
            "task_versions": {t: "1.0" for t in tasks},
            "data_hashes": {t: {"ko_context_inference": "c0ffee" * 10 + "0001", "ko_honorific": "beef" * 16,
                                "ko_md_translation": "d00d" * 16}[t] for t in tasks}}


def build_leaderboard_store(db: Path) -> LeaderboardFixture:
    """Write the fixture store at `db` (a new SQLite file) and close it, so its bytes are final."""
    fixture = LeaderboardFixture(db=db)
    store = open_store(db)
    try:
        ids = fixture.model_ids
        ids["alpha-7b"] = get_or_create_model(store, "id-alpha", kind="model", name="alpha-7b", source="org/alpha-7b",
                                              n_params=PARAMS["alpha-7b"], dtype="bfloat16", weights_hash="a" * 64)
        ids["beta-1.3b"] = get_or_create_model(store, "id-beta", kind="model", name="beta-1.3b",
                                               source="org/beta-1.3b", n_params=PARAMS["beta-1.3b"],
                                               dtype="float16", weights_hash="b" * 64)
        ids["alpha-7b+ko-lora"] = get_or_create_model(
            store, "id-alpha-lora", kind="adapter", name="alpha-7b+ko-lora", source="org/alpha-7b",
            n_params=PARAMS["alpha-7b"], dtype="bfloat16", quantization="nf4", base_model_id=ids["alpha-7b"],
            adapter_path="/adapters/ko-lora", adapter_hash="c" * 64)
        ids["gamma-13b"] = get_or_create_model(store, "id-gamma", kind="model", name="gamma-13b",
                                               source="org/gamma-13b", n_params=13_000_000_000, dtype="bfloat16")

        all_tasks = {"ko_context_inference": _context_outcome, "ko_honorific": _honorific_outcome,
                     "ko_md_translation": _translation_outcome}
        for key in ("alpha-7b", "beta-1.3b", "alpha-7b+ko-lora"):
            run_id = create_run(store, ids[key], **_provenance(list(all_tasks), GPU))
            for make in all_tasks.values():
                write_task(store, run_id, make(key))
            finish_run(store, run_id, "done", wall_s=92.0, peak_mem_mb=PEAK_MB[key],
                       gen_tokens_per_s=GEN_TPS[key], prompt_tokens_per_s=GEN_TPS[key] * 10)
            fixture.run_ids[key] = run_id

        run_id = create_run(store, ids["beta-1.3b"], **_provenance(["ko_context_inference"], CPU))
        write_task(store, run_id, _context_outcome("beta-1.3b@cpu"))
        finish_run(store, run_id, "done", wall_s=300.0, peak_mem_mb=PEAK_MB["beta-1.3b@cpu"],
                   gen_tokens_per_s=GEN_TPS["beta-1.3b@cpu"])
        fixture.run_ids["beta-1.3b@cpu"] = run_id

        members = [fixture.run_ids[k] for k in ("alpha-7b", "beta-1.3b", "alpha-7b+ko-lora")]
        ids["vote3"] = get_or_create_model(store, "id-vote3", kind="ensemble", name="vote3", source="ensemble",
                                           details={"members": members, "method": "hard vote"})
        run_id = create_run(store, ids["vote3"], kind="ensemble", hardware=GPU, config={"runs": members})
        write_task(store, run_id, _context_outcome("vote3"))
        finish_run(store, run_id, "done", wall_s=0.1)
        fixture.run_ids["vote3"] = run_id

        # A crashed run: its partial result must stay out of the ranking but show on the run detail page.
        run_id = create_run(store, ids["gamma-13b"], **_provenance(["ko_context_inference", "ko_honorific"], GPU))
        write_task(store, run_id, _context_outcome("alpha-7b"))
        finish_run(store, run_id, "failed", FAILED_ERROR, wall_s=40.0)
        fixture.run_ids["gamma-13b"] = run_id
    finally:
        store.dispose()
    return fixture
