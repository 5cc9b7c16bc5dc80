"""The bad-input corpus: every way a user can hand kobench something wrong, in one place.

Each case builds its input in a temp dir, runs the real entry point (harness.cli.main, in-process for speed; the
subprocess path is covered by tests/test_cli.py) and checks: exit code 2, exactly one `error:` line on stderr naming
the input and the fix, no traceback, and the results store byte-for-byte unchanged (the store is checkpointed before
the "before" hash, so no WAL is pending). One case is not an error by design: a prompt longer than the model's
context is cut from the left by lm-eval, as for any model, and recorded as a warning in the task details
(docs/reliability.md says why).
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.config import RunConfig
from harness.runner import run
from harness.store import open_store
from tests.conftest import FIXTURE_TASKS, make_adapter
from tests.conftest import sql as _sql
from tests.test_reliability import remote_code_model

SHIPPED = "shipped"  # a case that uses the shipped tasks/ (their documented formats) instead of the fixture tasks


@dataclass
class Ctx:
    """What a case may use: a temp dir, the tiny models, the shared store."""

    tmp: Path
    model: Path
    other_model: Path
    db: Path  # the store whose bytes must not change; a case that needs its own store replaces it
    tasks_dir: str | None = str(FIXTURE_TASKS)

    def file(self, name: str, content: str | bytes, encoding: str = "utf-8") -> Path:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
        return path

    def jsonl(self, name: str, rows: list[dict]) -> Path:
        return self.file(name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def run(self, *extra: str, tasks: str = "ko_fixture_mc", model: Path | str | None = None) -> list[str]:
        return ["run", "--model", str(model or self.model), "--tasks", tasks, "--db", str(self.db), "--device", "cpu",
                *extra]

    def data(self, task: str, path: Path) -> list[str]:
        self.tasks_dir = None if task.startswith("ko_legal") else self.tasks_dir
        return self.run("--data", f"{task}={path}", tasks=task)

    def task_dir_with(self, old: str, new: str, yaml_name: str = "ko_fixture_mc.yaml") -> str:
        """A copy of the fixture tasks with one edit to a task YAML."""
        root = self.tmp / "tasks"
        shutil.copytree(FIXTURE_TASKS, root)
        path = root / "ko_fixture" / yaml_name
        text = path.read_text(encoding="utf-8")
        assert old in text, old
        path.write_text(text.replace(old, new), encoding="utf-8")
        self.tasks_dir = str(root)
        return str(root)

    def own_store(self, name: str = "own.db") -> Path:
        self.db = self.tmp / name
        return self.db


MC = {"id": "mc-x", "question": "서울은 어느 나라의 수도인가?", "choices": ["한국", "일본", "중국"], "label": 0,
      "category": "지리"}
LEGAL_MCQ = {"id": "q1", "question": "질문?", "choices": ["가", "나", "다", "라"], "answer": 1, "category": "계약",
             "difficulty": "초급"}
LEGAL_QA_HEADER = "id,question,answer,category,difficulty,key_terms\n"


def _newer_schema(c: Ctx) -> list[str]:
    shutil.copy(c.db, c.own_store())
    _sql(c.db, "UPDATE kobench_meta SET value = '7' WHERE key = 'schema_version'")
    return c.run()


def _foreign_sqlite(c: Ctx) -> list[str]:
    _sql(c.own_store(), "CREATE TABLE customers (id INTEGER, name TEXT)")
    return c.run()


def _corrupt_copy(c: Ctx, source: Path, name: str, weights: str) -> Path:
    target = c.tmp / name
    shutil.copytree(source, target)
    weight_file = target / weights
    weight_file.write_bytes(weight_file.read_bytes()[: weight_file.stat().st_size // 2])
    return target


def _adapter_other_base(c: Ctx) -> list[str]:
    return c.run("--adapter", str(make_adapter(c.other_model, c.tmp / "lora-48")))


def _adapter_corrupt(c: Ctx) -> list[str]:
    adapter = make_adapter(c.model, c.tmp / "lora")
    return c.run("--adapter", str(_corrupt_copy(c, adapter, "lora-cut", "adapter_model.safetensors")))


def _adapter_config_not_json(c: Ctx) -> list[str]:
    (c.tmp / "lora").mkdir()
    c.file("lora/adapter_config.json", "{r: 4")
    return c.run("--adapter", str(c.tmp / "lora"))


# (case id, builder: Ctx -> argv, substrings the one error line must hold: the input named, and the fix)
CASES: list[tuple[str, Callable[[Ctx], list[str]], tuple[str, ...]]] = [
    # ---- data files --------------------------------------------------------------------------------------------
    ("jsonl_bad_line", lambda c: c.data("ko_fixture_mc", c.file("bad.jsonl", json.dumps(MC) + "\n{not json}\n")),
     ("bad.jsonl: line 2", "invalid JSON", "Expected: one JSON object per line")),
    ("json_list_malformed", lambda c: c.data("ko_fixture_mc", c.file("bad.json", '[{"id": "a"},\n {"id": ')),
     ("bad.json: line 2", "Expected: a JSON list of objects")),
    ("empty_file", lambda c: c.data("ko_fixture_mc", c.file("empty.jsonl", "")),
     ("empty.jsonl", "the file is empty", "Expected: at least one item")),
    ("blank_lines_only", lambda c: c.data("ko_fixture_mc", c.file("blank.jsonl", "\n  \n\n")),
     ("blank.jsonl", "no items", "Expected:")),
    ("utf16_file", lambda c: c.data("ko_fixture_mc", c.file("utf16.jsonl", json.dumps(MC, ensure_ascii=False),
                                                            encoding="utf-16")),
     ("utf16.jsonl", "not UTF-8 or CP949", "Expected: a UTF-8")),
    ("latin1_garbage", lambda c: c.data("ko_fixture_mc", c.file("latin1.jsonl", '{"id": "café ÿ"}\n',
                                                                encoding="latin-1")),
     ("latin1.jsonl", "not UTF-8 or CP949", "Expected: a UTF-8")),
    ("json_not_objects", lambda c: c.data("ko_fixture_mc", c.file("list.json", "[1, 2]")),
     ("list.json: item 1", "expected a JSON object")),
    ("data_file_missing", lambda c: c.data("ko_fixture_mc", c.tmp / "nope.jsonl"),
     ("nope.jsonl", "no such file", "Expected: an existing file path")),
    ("data_is_a_directory", lambda c: c.data("ko_fixture_mc", c.tmp),
     ("is a directory", "Expected: a data file")),
    ("data_flag_without_path", lambda c: c.run("--data", "ko_fixture_mc"),
     ("--data ko_fixture_mc", "expected TASK=PATH")),
    ("data_for_a_task_not_run", lambda c: c.run("--data", f"ko_fixture_gen={c.file('g.jsonl', '{}')}"),
     ("--data ko_fixture_gen=", "add it to --tasks")),
    ("csv_missing_columns", lambda c: c.data("ko_legal_qa", c.file("qa.csv", "question,answer\n질문?,답\n")),
     ("qa.csv: header", "missing column(s) category, difficulty", "Expected: columns question, answer")),
    ("csv_extra_fields", lambda c: c.data("ko_legal_qa", c.file(
        "qa.csv", LEGAL_QA_HEADER + "a1,질문?,답,계약,초급,용어\na2,질문?,답,계약,초급,용어,덤,더\n")),
     ("qa.csv: line 3", "8 fields but the header has 6", "Expected:")),
    ("csv_header_only", lambda c: c.data("ko_legal_qa", c.file("qa.csv", LEGAL_QA_HEADER)),
     ("qa.csv", "header but no rows", "Expected:")),
    ("csv_empty_answer", lambda c: c.data("ko_legal_qa", c.file("qa.csv", LEGAL_QA_HEADER + "a1,질문?,,계약,초급,\n")),
     ("qa.csv: line 2 (id a1)", "empty 'answer'", "Expected:")),
    ("jsonl_missing_field", lambda c: c.data("ko_legal_mcq", c.jsonl("mcq.jsonl", [
        {k: v for k, v in LEGAL_MCQ.items() if k != "question"}])),
     ("mcq.jsonl: line 1 (id q1)", "missing or empty 'question'", "Expected:")),
    ("duplicate_ids", lambda c: c.data("ko_legal_mcq", c.jsonl("mcq.jsonl", [LEGAL_MCQ, LEGAL_MCQ])),
     ("mcq.jsonl: line 2", "duplicate id 'q1' (first at line 1)", "Expected: unique ids")),
    ("answer_out_of_range", lambda c: c.data("ko_legal_mcq", c.jsonl("mcq.jsonl", [{**LEGAL_MCQ, "answer": 7}])),
     ("mcq.jsonl: line 1 (id q1)", "'answer' 7 is not a choice", "0, 1, 2 or 3")),
    ("wrong_number_of_choices", lambda c: c.data("ko_legal_mcq", c.jsonl("mcq.jsonl", [
        {**LEGAL_MCQ, "choices": ["가", "나", "다"]}])),
     ("mcq.jsonl: line 1 (id q1)", "'choices' must be a list of 4 options, got 3")),
    # ---- tasks and metrics -------------------------------------------------------------------------------------
    ("unknown_task", lambda c: c.run(tasks="ko_fixture_mcq"),
     ("--tasks ko_fixture_mcq", "Did you mean 'ko_fixture_mc'")),
    ("markup_in_the_input", lambda c: c.run(tasks="ko_[bold]fixture[/]"),  # printed as typed, not as rich markup
     ("--tasks ko_[bold]fixture[/]: unknown task", "see `kobench tasks`")),
    ("unknown_metric", lambda c: c.task_dir_with("metric: acc\n", "metric: acc_typo\n") and c.run(),
     ("ko_fixture_mc.yaml", "metric 'acc_typo' is not an lm-eval metric", "Fix metric_list")),
    ("unknown_main_metric", lambda c: c.task_dir_with("main_metric: acc", "main_metric: accuracy") and c.run(),
     ("ko_fixture_mc.yaml", "main_metric 'accuracy' is not one of its metrics (acc)", "Fix metadata.kobench")),
    ("unknown_aggregation", lambda c: c.task_dir_with("aggregation: mean", "aggregation: average") and c.run(),
     ("ko_fixture_mc.yaml", "unknown aggregation 'average'", "Use one of")),
    ("task_yaml_syntax_error", lambda c: c.task_dir_with("output_type: multiple_choice",
                                                         "output_type: [multiple_choice") and c.run(),
     ("ko_fixture_mc.yaml", "YAML syntax error at line", "Fix the file")),
    ("unknown_suite", lambda c: ["run", "--model", str(c.model), "--suite", "nightly", "--db", str(c.db)],
     ("--suite nightly", "known: ")),
    ("unknown_category", lambda c: c.run("--categories", "우주"),
     ("--categories 우주", "Known categories: 과학, 상식, 지리")),
    # ---- models and adapters -------------------------------------------------------------------------------------
    ("unknown_model_alias", lambda c: c.run(model="gemma3-27m"),
     ("--model gemma3-27m", "Did you mean 'gemma3-270m'")),
    ("directory_not_a_model", lambda c: c.run(model=c.tmp),
     ("no config.json", "Pass a folder written by save_pretrained")),
    ("model_is_a_file", lambda c: c.run(model=c.file("weights.bin", b"\0" * 64)),
     ("weights.bin: is a file", "pass the model directory")),
    ("corrupt_gguf_file", lambda c: c.run(model=c.file("model.gguf", b"GGUF" + b"\x03\0\0\0" + b"\xff" * 40)),
     ("model.gguf: is a file", "pass the model directory")),
    ("truncated_safetensors", lambda c: c.run(model=_corrupt_copy(c, c.model, "cut-model", "model.safetensors")),
     ("model.safetensors is damaged", "Download or copy it again")),
    ("hf_id_not_cached", lambda c: c.run(model="nobody-kobench/no-such-model"),
     ("--model nobody-kobench/no-such-model", "Pass --online")),
    ("needs_remote_code", lambda c: c.run(model=remote_code_model(c.tmp / "custom", c.tmp / "ran")),
     ("needs custom code", "pass --trust-remote-code if you trust it")),
    ("adapter_for_another_base", _adapter_other_base, ("--adapter", "names base", "Pass --model")),
    ("adapter_dir_not_an_adapter", lambda c: c.run("--adapter", str(c.tmp)),
     ("no adapter_config.json", "Pass the folder written by `kobench finetune`")),
    ("adapter_config_not_json", _adapter_config_not_json, ("adapter_config.json is not valid JSON",)),
    ("adapter_weights_truncated", _adapter_corrupt, ("--adapter", "adapter_model.safetensors is damaged")),
    # ---- flags ------------------------------------------------------------------------------------------------------
    ("unknown_hardware_profile", lambda c: c.run("--hardware", "rtx9090"), ("rtx9090", "kobench hardware")),
    ("bad_profiles_file", lambda c: c.run("--profiles", str(c.file("p.yaml", "profiles: [oops")),
                                          "--hardware", "x"),
     ("p.yaml", "YAML syntax error", "Fix: correct the YAML")),
    ("limit_negative", lambda c: c.run("--limit", "-1"), ("--limit -1", "must be a positive number")),
    ("batch_size_zero", lambda c: c.run("--batch-size", "0"), ("--batch-size 0", "a positive integer or 'auto'")),
    ("batch_size_text", lambda c: c.run("--batch-size", "big"), ("--batch-size big", "a positive integer or 'auto'")),
    ("num_fewshot_negative", lambda c: c.run("--num-fewshot", "-2"), ("--num-fewshot -2", "must be 0 or more")),
    ("unknown_device", lambda c: c.run("--device", "tpu"), ("--device tpu", "use cpu, cuda")),
    ("chat_template_missing", lambda c: c.run("--chat-template", "on"),
     ("--chat-template on", "has no chat template", "Use auto or off")),
    ("quantize_auto_without_hardware", lambda c: c.run("--quantize", "auto"), ("--quantize auto", "--hardware")),
    # ---- the results store -----------------------------------------------------------------------------------------
    ("store_from_a_newer_schema", _newer_schema, ("schema version 7", "Upgrade kobench")),
    ("non_kobench_sqlite_file", _foreign_sqlite, ("not a kobench results store", "customers", "Pass another --db")),
    ("db_not_a_database", lambda c: c.file("notes.db", "hello\n" * 200) and c.own_store("notes.db") and c.run(),
     ("notes.db", "cannot open the results store", "file is not a database")),
    ("db_url_bad_driver", lambda c: ["show", "--db", "mysql+nodriver://kb:pw@host/db"],
     ("unknown database driver", "Use a path, sqlite:///FILE")),
    ("db_directory_missing", lambda c: c.own_store("nope/results.db") and c.run(),
     ("does not exist", "Create it or pass another --db")),
    ("db_is_a_directory", lambda c: c.run()[:5] + ["--db", str(c.tmp)],
     ("is a directory", "Pass a file path")),
    ("db_read_only_url", lambda c: c.run()[:5] + ["--db", f"sqlite:///file:{c.db}?mode=ro&uri=true"],
     ("mode=ro", "drop mode=ro")),
    ("show_missing_store", lambda c: ["show", "--db", str(c.own_store("absent.db"))],
     ("no such results store", "Run `kobench run` first")),
    ("export_unknown_run", lambda c: ["export", "--run", "999", "--samples", "--format", "jsonl", "--db", str(c.db)],
     ("--run 999", "no such run", "kobench show --json")),
    ("screen_candidates_not_a_list", lambda c: ["screen", "--candidates", str(c.file("c.yaml", "model: x\n")),
                                                "--tasks", "ko_fixture_mc", "--db", str(c.db)],
     ("--candidates", "expected a YAML list", "model: gemma3-270m")),
]


@pytest.fixture(scope="module")
def shared_store(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with one finished run: the bytes every case must leave unchanged."""
    db = tmp_path_factory.mktemp("bad-input") / "results.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KOBENCH_TASKS_DIR", str(FIXTURE_TASKS))
        run(RunConfig(model=str(tiny_model), tasks=["ko_fixture_mc"], db=str(db), device="cpu", limit=2))
    return db


def store_bytes(db: Path) -> bytes | None:
    """The store file plus any WAL beside it (None when there is no store)."""
    if not db.is_file():
        return None
    wal = db.with_name(db.name + "-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def invoke(argv: list[str], tasks_dir: str | None, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The real `kobench` entry point in this process: (exit code, stdout, stderr)."""
    from harness.cli import main

    if tasks_dir:
        monkeypatch.setenv("KOBENCH_TASKS_DIR", tasks_dir)
    else:
        monkeypatch.delenv("KOBENCH_TASKS_DIR", raising=False)
    monkeypatch.setattr(sys, "argv", ["kobench", *argv])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name,build,expected", CASES, ids=[name for name, _, _ in CASES])
def test_bad_input(name: str, build: Callable[[Ctx], list[str]], expected: tuple[str, ...], shared_store: Path,
                   tiny_model: Path, other_tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    open_store(shared_store).dispose()  # checkpointed: no WAL pending before the "before" hash
    ctx = Ctx(tmp=tmp_path, model=tiny_model, other_model=other_tiny_model, db=shared_store)
    argv = build(ctx)
    before, shared_before = store_bytes(ctx.db), store_bytes(shared_store)
    code, out, err = invoke(argv, ctx.tasks_dir, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}\n{out}\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for part in expected:
        assert part in lines[0], f"{part!r} not in: {lines[0]}"
    assert "Traceback" not in out + err
    assert store_bytes(ctx.db) == before and store_bytes(shared_store) == shared_before


def test_prompt_longer_than_the_context_is_cut_from_the_left_and_recorded(
        shared_store: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The tiny model reads 1024 tokens; one item's question alone is ~4,000. Like lm-eval does for any model, the
    start of that prompt is dropped; kobench says so on the console and in the task's details."""
    ctx = Ctx(tmp=tmp_path, model=tiny_model, other_model=tiny_model, db=tmp_path / "results.db")
    data = ctx.jsonl("huge.jsonl", [{"id": "gen-huge", "question": "서울은 한국의 수도이다. " * 400, "answer": "서울"},
                                    {"id": "gen-small", "question": "하루는 몇 시간?", "answer": "24시간"}])
    code, out, err = invoke(ctx.run("--data", f"ko_fixture_gen={data}", "--json", tasks="ko_fixture_gen"),
                            str(FIXTURE_TASKS), monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "done" and result["n"] == {"ko_fixture_gen": 2}
    warning = [line for line in err.splitlines() if "warning: ko_fixture_gen: 1 of 2 prompts" in line]
    assert warning and "gen-huge" in err and "1024-token context" in err, err
    conn = sqlite3.connect(ctx.db)
    details = json.loads(conn.execute("SELECT details FROM task_results").fetchone()[0])
    conn.close()
    assert details["truncated"]["items"] == ["gen-huge"] and details["truncated"]["context"] == 1024
    assert details["truncated"]["longest_tokens"] > 1024
    assert details["decode"] == ["generate"]  # on a CPU: transformers' generate (CUDA graphs need a GPU)
