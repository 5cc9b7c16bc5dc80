"""Shared fixtures: a tiny random Llama with a tokenizer trained on Korean lines, fixture tasks, temp stores."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["tests.pg"]  # the throwaway PostgreSQL server fixtures (pg_server, pg_url)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE_TASKS = FIXTURES / "tasks"

KOREAN_LINES = [
    "서울은 한국의 수도이다.", "물은 100도에서 끓는다.", "일주일은 7일이다.", "김치는 한국 음식이다.",
    "태양은 동쪽에서 뜬다.", "부산은 남해에 접해 있다.", "하루는 24시간이다.", "세종대왕이 한글을 만들었다.",
    "가장 큰 바다는 태평양이다.", "정답: 한국 일본 중국 미국 영국", "오늘 점심 뭐 먹을래? 김밥 먹자.",
    "안녕하세요, 무엇을 도와드릴까요?", "화자1: 내일 회의 몇 시야? 화자2: 세 시요.", "대한민국 서울 부산 대구 인천",
    "질문: 답: 정답: A B C", "The quick brown fox jumps over the lazy dog.",
]


def build_tiny_model(directory: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A 2-layer random Llama + BPE tokenizer trained on the lines above, saved like any HF model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(KOREAN_LINES * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model of another width: adapters trained on it do not fit `tiny_model`."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama-48", hidden=48, seed=1)


def make_adapter(base: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("adapters") / "tiny-lora")


@pytest.fixture()
def fixture_tasks(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point kobench at the fixture tasks (tests/fixtures/tasks) instead of the shipped ones."""
    monkeypatch.setenv("KOBENCH_TASKS_DIR", str(FIXTURE_TASKS))
    return FIXTURE_TASKS


@pytest.fixture()
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "results.db"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write to the user's kobench cache (the embedded-model conversion cache is shared on purpose)."""
    monkeypatch.setenv("KOBENCH_DB", str(tmp_path_factory.getbasetemp() / "default-results.db"))


def file_digest(path: Path) -> str | None:
    """sha256 of a file (None when absent): 'the store is byte-for-byte unchanged' checks."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def kobench(*args: str, env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real `kobench` entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=full_env,
                          cwd=REPO, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"kobench {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def last_json_line(stdout: str) -> object:
    return json.loads(stdout.strip().splitlines()[-1])


def sql(path: Path, statement: str) -> None:
    """Run one statement with sqlite3 and close the connection (so the WAL is checkpointed into the file)."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()
