"""The runner through the real lm-eval path into a real SQLite file, checked against independent computations."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.config import RunConfig
from harness.errors import KobenchError
from harness.runner import run, stratified_indices
from harness.store import open_store
from harness.store.schema import Model, Run, Sample, Score, TaskResult
from tests.conftest import FIXTURE_TASKS


def _fixture_docs(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURE_TASKS / "ko_fixture" / name).read_text().splitlines()]


def _reference_choice(model, tokenizer, context: str, choices: list[str]) -> int:  # noqa: ANN001
    """argmax over choices of log P(" choice" | context), computed directly with torch."""
    scores = []
    ctx_ids = tokenizer(context, add_special_tokens=False).input_ids
    for choice in choices:
        whole = tokenizer(context + " " + choice, add_special_tokens=False).input_ids
        cont = whole[len(ctx_ids):]
        ids = torch.tensor([whole])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        start = len(whole) - len(cont)
        scores.append(sum(logprobs[start - 1 + i, tok].item() for i, tok in enumerate(cont)))
    return max(range(len(scores)), key=scores.__getitem__)


def _reference_generation(model, tokenizer, prompt: str, max_new: int) -> str:  # noqa: ANN001
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]


def test_run_stores_scores_and_samples_matching_reference(tiny_model: Path, fixture_tasks: Path,
                                                          db_path: Path) -> None:
    result = run(RunConfig(model=str(tiny_model), tasks=["ko_fixture_mc", "ko_fixture_gen"], db=str(db_path),
                           device="cpu", batch_size="2"))
    assert result.status == "done"

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    mc_docs = _fixture_docs("mc.jsonl")
    expected_choice = [_reference_choice(model, tokenizer, f"{d['question']}\n정답:", d["choices"]) for d in mc_docs]
    expected_acc = sum(c == d["label"] for c, d in zip(expected_choice, mc_docs)) / len(mc_docs)
    gen_docs = _fixture_docs("gen.jsonl")
    expected_gen = [_reference_generation(model, tokenizer, f"{d['question']}\n답:", 6) for d in gen_docs]

    store = open_store(db_path, readonly=True)
    with store.session() as session:
        run_row = session.get(Run, result.run_id)
        assert run_row.status == "done" and run_row.ended_at is not None and run_row.wall_s > 0
        assert run_row.versions["lm-eval"] == "0.4.13"
        assert run_row.seeds["random"] == 1234
        assert set(run_row.data_hashes) == {"ko_fixture_mc", "ko_fixture_gen"}
        model_row = session.get(Model, run_row.model_id)
        assert model_row.name == "tiny-llama" and model_row.source == f"local:{tiny_model}"
        assert model_row.n_params == sum(p.numel() for p in model.parameters())
        scores = {(s.task, s.metric): s.value for s in session.scalars(select(Score))}
        mc_samples = session.scalars(select(Sample).where(Sample.task == "ko_fixture_mc").order_by(Sample.doc_id)).all()
        gen_samples = session.scalars(select(Sample).where(Sample.task == "ko_fixture_gen")
                                      .order_by(Sample.doc_id)).all()
    store.dispose()

    assert [int(s.output) for s in mc_samples] == expected_choice
    assert [int(s.target) for s in mc_samples] == [d["label"] for d in mc_docs]
    assert scores[("ko_fixture_mc", "acc")] == pytest.approx(expected_acc)
    assert result.scores["ko_fixture_mc"]["acc"] == pytest.approx(expected_acc)
    # per-category breakdown = mean of the per-sample acc within each category
    for category in {d["category"] for d in mc_docs}:
        members = [c == d["label"] for c, d in zip(expected_choice, mc_docs) if d["category"] == category]
        assert scores[("ko_fixture_mc", f"acc[category={category}]")] == pytest.approx(sum(members) / len(members))
    assert [s.output.split("\n")[0] for s in gen_samples] == expected_gen
    assert scores[("ko_fixture_gen", "exact_match")] == pytest.approx(
        sum(g == d["answer"] for g, d in zip(expected_gen, gen_docs)) / len(gen_docs))
    assert all(s.prompt.startswith(d["question"]) for s, d in zip(mc_samples, mc_docs))


def test_finished_tasks_are_reused_unless_forced(tiny_model: Path, fixture_tasks: Path, db_path: Path) -> None:
    config = dict(model=str(tiny_model), tasks=["ko_fixture_mc"], db=str(db_path), device="cpu")
    first = run(RunConfig(**config))
    second = run(RunConfig(**config))
    assert second.reused == ["ko_fixture_mc"] and second.scores == first.scores
    forced = run(RunConfig(**config, force=True))
    assert forced.reused == []
    # a different item subset is a different fingerprint: computed, not reused
    limited = run(RunConfig(**config, limit=3))
    assert limited.reused == [] and limited.n["ko_fixture_mc"] == 3
    store = open_store(db_path, readonly=True)
    with store.session() as session:
        results = session.scalars(select(TaskResult).order_by(TaskResult.id)).all()
        assert [r.reused_from_id for r in results] == [None, results[0].id, None, None]
        # reused results carry the scores but not a second copy of the samples
        assert session.query(Sample).filter(Sample.task_result_id == results[1].id).count() == 0
    store.dispose()


def test_adapter_run_links_to_its_base(tiny_model: Path, tiny_adapter: Path, fixture_tasks: Path,
                                       db_path: Path) -> None:
    result = run(RunConfig(model=str(tiny_model), adapter=str(tiny_adapter), tasks=["ko_fixture_mc"],
                           db=str(db_path), device="cpu"))
    store = open_store(db_path, readonly=True)
    with store.session() as session:
        model_row = session.get(Model, session.get(Run, result.run_id).model_id)
        assert model_row.kind == "adapter" and model_row.adapter_hash
        assert model_row.base_model.name == "tiny-llama" and model_row.base_model.adapter_hash is None
    store.dispose()


def test_adapter_for_another_base_fails_before_anything_is_stored(tiny_model: Path, other_tiny_model: Path,
                                                                  tmp_path: Path, fixture_tasks: Path,
                                                                  db_path: Path) -> None:
    from tests.conftest import make_adapter

    adapter = make_adapter(other_tiny_model, tmp_path / "lora-48")
    with pytest.raises(KobenchError, match="--adapter"):
        run(RunConfig(model=str(tiny_model), adapter=str(adapter), tasks=["ko_fixture_mc"], db=str(db_path),
                      device="cpu"))
    assert not db_path.exists()


def test_stratified_indices_spread_over_categories() -> None:
    docs = [{"c": c} for c in "aaaabbbbcc"]
    # round-robin a, b, c, a, b -> indices 0, 4, 8, 1, 5
    assert stratified_indices(docs, 5, "c") == [0, 1, 4, 5, 8]
    assert stratified_indices(docs, 50, "c") == list(range(10))


def test_quick_suite_takes_short_items_and_caps_generation() -> None:
    from harness.runner import _suite_gen_kwargs
    from harness.tasks import TaskInfo

    docs = [{"c": "a", "t": "x" * 50}, {"c": "a", "t": "x"}, {"c": "b", "t": "x" * 9}, {"c": "b", "t": "x" * 3}]
    # shortest first within each category: a -> index 1, b -> index 3
    assert stratified_indices(docs, 2, "c", prefer_short=True) == [1, 3]
    assert stratified_indices(docs, 2, "c") == [0, 2]
    gen = TaskInfo(name="t", yaml_path=Path("t.yaml"), output_type="generate_until", version="1", main_metric="m",
                   raw={"generation_kwargs": {"max_gen_toks": 256}})
    assert _suite_gen_kwargs({"max_gen_toks": 64}, gen) == {"max_gen_toks": 64}
    assert _suite_gen_kwargs({"max_gen_toks": 512}, gen) is None  # the task's own limit is already lower
    mc = TaskInfo(name="m", yaml_path=Path("m.yaml"), output_type="multiple_choice", version="1", main_metric="acc")
    assert _suite_gen_kwargs({"max_gen_toks": 64}, mc) is None
