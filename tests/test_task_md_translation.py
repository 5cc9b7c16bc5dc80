"""ko_md_translation: shipped data, reader, metrics against sacrebleu, the data CLI, and runs through the runner."""
from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sacrebleu
from sqlalchemy import select

from harness.config import RunConfig
from harness.data.synth_md import REQUIRED_ELEMENTS, STYLES, generate_pairs
from harness.errors import DataError
from harness.metrics.markdown import markdown_elements, preservation
from harness.runner import run
from harness.store import open_store
from harness.store.schema import Sample, Score
from harness.taskdata import read_records
from harness.taskdata.md_translation import read_md_translation, source_from_prompt
from harness.tasks import discover_tasks
from tests.conftest import REPO, file_digest

TASK_DIR = REPO / "tasks" / "ko_md_translation"
DATA = TASK_DIR / "data"
SPLIT_SIZES = {"test": 120, "train": 150, "dev": 20}
HANGUL = re.compile(r"[\uac00-\ud7a3]")


def _utils():  # noqa: ANN202 - the task's utils.py, imported the way lm-eval does (from its file)
    spec = importlib.util.spec_from_file_location("ko_md_translation_utils", TASK_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _raw(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def kobench(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """The real entry point (harness.cli.main) in this process: the exit code, stdout and stderr it produced."""
    from harness.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["kobench", *args])
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        out, err = io.StringIO(), io.StringIO()
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- shipped data -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", list(SPLIT_SIZES))
def test_shipped_split_schema_and_ids(split: str) -> None:
    raw = _raw(split)
    assert len(raw) == SPLIT_SIZES[split]
    assert [r["id"] for r in raw] == [f"md-{split}-{n:03d}" for n in range(1, len(raw) + 1)]
    for r in raw:
        assert set(r) == {"id", "style", "messages"} and r["style"] in STYLES
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
    docs = read_records(DATA / f"{split}.jsonl", "ko_md_translation")
    assert [d["id"] for d in docs] == [r["id"] for r in raw]
    assert [d["source"] for d in docs] == [r["messages"][1]["content"].strip() for r in raw]
    assert [d["reference"] for d in docs] == [r["messages"][2]["content"].strip() for r in raw]


def test_test_split_has_20_documents_per_style() -> None:
    assert Counter(d["style"] for d in _raw("test")) == {style: 20 for style in STYLES}


@pytest.mark.parametrize("split", list(SPLIT_SIZES))
def test_every_document_has_its_styles_elements_and_a_faithful_reference(split: str) -> None:
    for doc in read_md_translation(DATA / f"{split}.jsonl"):
        found = markdown_elements(doc["source"])
        missing = [kind for kind in REQUIRED_ELEMENTS[doc["style"]] if not found[kind]]
        assert not missing, (doc["id"], doc["style"], missing)
        score = preservation(doc["source"], doc["reference"])
        assert score["md_preservation"] == 1.0 and score["code_exact"] in (1.0, None), doc["id"]
        # English outside code: Hangul may only appear inside code (e.g. a Korean string a program parses)
        elements = markdown_elements(doc["reference"])
        prose = doc["reference"]
        for code in [content for _lang, content in elements["code_block"]] + elements["inline_code"]:
            prose = prose.replace(code, "")
        assert not HANGUL.search(prose), doc["id"]


def _grams(text: str, n: int = 5) -> set[str]:
    flat = " ".join(text.split())
    return {flat[i:i + n] for i in range(len(flat) - n + 1)}


def test_no_document_is_shared_or_near_duplicated_between_splits() -> None:
    """Character 5-gram Jaccard between sources of different splits stays far below a near-copy (max seen ~0.26)."""
    grams = {split: [(d["id"], _grams(d["source"])) for d in read_md_translation(DATA / f"{split}.jsonl")]
             for split in SPLIT_SIZES}
    synthetic = [(r["id"], _grams(r["messages"][1]["content"])) for r in generate_pairs(60, seed=0)]
    pairs = [("test", "train"), ("test", "dev"), ("train", "dev")]
    for left, right in pairs + [("test", "synthetic")]:
        others = synthetic if right == "synthetic" else grams[right]
        for left_id, a in grams[left]:
            for right_id, b in others:
                assert len(a & b) / len(a | b) < 0.5, (left_id, right_id)
    sources = [d["source"] for split in SPLIT_SIZES for d in read_md_translation(DATA / f"{split}.jsonl")]
    assert len(set(sources)) == len(sources)


# --- reader -------------------------------------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "Translate."}


def _record(item_id: str, *turns: dict) -> str:
    return json.dumps({"id": item_id, "style": "blog", "messages": list(turns)}, ensure_ascii=False)


def test_reader_takes_the_last_user_turn_and_the_answer_after_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "multi.jsonl", [_record(
        "a", SYSTEM, {"role": "user", "content": "# 예시"}, {"role": "assistant", "content": "# Example"},
        {"role": "user", "content": "## 설치\n"}, {"role": "assistant", "content": "## Installation\n"})])
    assert read_md_translation(path) == [{"id": "a", "style": "blog", "system": "Translate.", "source": "## 설치",
                                          "reference": "## Installation"}]


def test_reader_errors_name_the_file_and_line(tmp_path: Path) -> None:
    good = _record("a", SYSTEM, {"role": "user", "content": "# 제목"}, {"role": "assistant", "content": "# Title"})
    malformed = _write(tmp_path / "malformed.jsonl", [good, '{"id": "b", "messages": [}'])
    with pytest.raises(DataError, match=r"malformed\.jsonl: line 2: invalid JSON"):
        read_md_translation(malformed)
    no_answer = _write(tmp_path / "no_answer.jsonl", [good, _record("b", SYSTEM, {"role": "user", "content": "# 제목"})])
    with pytest.raises(DataError, match=r"no_answer\.jsonl: line 2 \(id b\): no assistant turn"):
        read_md_translation(no_answer)
    no_user = _write(tmp_path / "no_user.jsonl", [_record("c", SYSTEM, {"role": "assistant", "content": "Hi"})])
    with pytest.raises(DataError, match=r"no_user\.jsonl: line 1 \(id c\): no user turn"):
        read_md_translation(no_user)
    bad_role = _write(tmp_path / "bad_role.jsonl", [_record("d", {"role": "tool", "content": "x"})])
    with pytest.raises(DataError, match=r"line 1 \(id d\): turn .* role system \| user \| assistant"):
        read_md_translation(bad_role)
    duplicate = _write(tmp_path / "dup.jsonl", [good, good])
    with pytest.raises(DataError, match=r"line 2: duplicate id 'a' \(first at line 1\)"):
        read_md_translation(duplicate)


# --- metrics ------------------------------------------------------------------------------------------------------

REFS = ["## Installation\n\nRun `pip install brisket` to install the package.",
        "The cache directory is **~/.cache** by default.\n\n- Retries: 3\n- Timeout: 30 seconds"]
HYPS = ["## Install\n\nRun `pip install brisket` to install it.",
        "By default the cache directory is **~/.cache**.\n\n- Retries: 3\n- Timeout: 30s"]


def test_corpus_bleu_and_chrf_equal_sacrebleu() -> None:
    utils = _utils()
    items = list(zip(REFS, HYPS))
    assert utils.corpus_bleu(items) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert utils.corpus_chrf(items) == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    # corpus BLEU pools n-gram counts over documents: it is not the mean of the sentence scores
    sentence_mean = sum(sacrebleu.sentence_bleu(h, [r]).score for h, r in items) / 2
    assert utils.corpus_bleu(items) != pytest.approx(sentence_mean)
    assert utils.corpus_bleu([(REFS[0], REFS[0])]) == pytest.approx(100.0)


def test_process_results_per_document() -> None:
    utils = _utils()
    doc = {"source": "## 설치\n\n`pip install brisket`으로 설치합니다.\n\n```bash\npip install brisket\n```",
           "reference": "## Installation\n\nInstall with `pip install brisket`.\n\n```bash\npip install brisket\n```"}
    # the model echoed the prompt's "### English" line and dropped the code block
    out = utils.process_results(doc, ["### English\n## Install\n\nInstall it with `pip install brisket`.\n"])
    hyp = "## Install\n\nInstall it with `pip install brisket`."
    assert out["bleu"] == out["chrf"] == (doc["reference"], hyp)
    assert out["chrf_sentence"] == pytest.approx(sacrebleu.sentence_chrf(hyp, [doc["reference"]]).score)
    # source: heading(2), inline code, code block; output: heading(2), inline code -> 2 of 3 matched
    assert out["md_preservation"] == pytest.approx(2 / 3)
    assert out["code_exact"] == 0.0
    assert out["md_heading"] == out["md_inline_code"] == 1.0 and out["md_code_block"] == 0.0
    assert "md_table" not in out  # in neither text
    assert out["korean_ratio"] == 0.0


def test_loader_gives_chat_models_the_bare_source_and_others_the_frame() -> None:
    load = _utils().load
    docs = read_md_translation(DATA / "test.jsonl")
    chat = load(kobench_chat=True)["test"]
    plain = load(kobench_chat=False)["test"]
    unknown = load()["test"]  # plain `lm_eval --include_path tasks`: no kobench metadata
    assert [d["prompt"] for d in chat] == [d["source"] for d in docs]
    assert [d["prompt"] for d in plain] == [f"### Korean\n{d['source']}\n\n### English\n" for d in docs]
    assert [d["prompt"] for d in unknown] == [d["prompt"] for d in plain]
    assert len(load()["train"]) == 150 and len(load()["dev"]) == 20


# --- data CLI -----------------------------------------------------------------------------------------------------


def test_validate_md_exit_codes(tmp_path: Path) -> None:
    ok = kobench("data", "validate-md", str(DATA / "dev.jsonl"))
    assert ok.returncode == 0, ok.stderr
    assert "20 items, md_preservation 1.0000" in ok.stdout

    # item b drops one of two list items: md_preservation (1 heading + 1 of 2 items) / 3 = 2/3; mean (1 + 2/3) / 2
    good = _record("a", SYSTEM, {"role": "user", "content": "# 제목\n\n- 하나"},
                   {"role": "assistant", "content": "# Title\n\n- One"})
    lossy = _record("b", SYSTEM, {"role": "user", "content": "# 제목\n\n- 하나\n- 둘"},
                    {"role": "assistant", "content": "# Title\n\n- One, two"})
    low = kobench("data", "validate-md", str(_write(tmp_path / "low.jsonl", [good, lossy])))
    assert low.returncode == 1
    assert "md_preservation 0.8333" in low.stdout and "b (blog): md_preservation 0.67" in low.stdout
    assert "a (blog)" not in low.stdout
    relaxed = kobench("data", "validate-md", str(tmp_path / "low.jsonl"), "--min-overall-rate", "0.8")
    assert relaxed.returncode == 0

    bad = kobench("data", "validate-md", str(_write(tmp_path / "bad.jsonl", [good, "{oops"])))
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error:") and "bad.jsonl: line 2: invalid JSON" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    missing = kobench("data", "validate-md", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_synth_md_cli_is_deterministic_and_never_writes_test_data(tmp_path: Path) -> None:
    first, second, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    for out, seed in ((first, "7"), (second, "7"), (other, "8")):
        proc = kobench("data", "synth-md", "--num", "12", "--seed", seed, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    records = [json.loads(line) for line in first.read_text(encoding="utf-8").splitlines()]
    assert records == generate_pairs(12, seed=7)
    assert len(read_md_translation(first)) == 12  # the task's reader accepts what the generator writes
    target = DATA / "test_synth.jsonl"
    refused = kobench("data", "synth-md", "--num", "3", "--out", str(target))
    assert refused.returncode == 2 and "training only" in refused.stderr
    assert not target.exists()


# --- through the runner -------------------------------------------------------------------------------------------


def test_task_registration() -> None:
    info = discover_tasks()["ko_md_translation"]
    assert (info.main_metric, info.scale, info.breakdown, info.data_format) == ("chrf", 1.0, ["style"],
                                                                                  "ko_md_translation")
    until = info.raw["generation_kwargs"]["until"]
    assert not any(stop.strip() == "" for stop in until), "a blank-line stop would cut multi-paragraph documents"
    assert info.raw["generation_kwargs"]["max_gen_toks"] >= 700


@pytest.fixture(scope="module")
def md_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[tuple[Path, int]]:
    """The task's own files, with max_gen_toks 24 so the random tiny model finishes fast, run with limit 3."""
    root = tmp_path_factory.mktemp("tasks")
    shutil.copytree(TASK_DIR, root / "ko_md_translation", ignore=shutil.ignore_patterns("__pycache__"))
    yaml_path = root / "ko_md_translation" / "ko_md_translation.yaml"
    text = yaml_path.read_text(encoding="utf-8")
    assert "max_gen_toks: 768" in text
    yaml_path.write_text(text.replace("max_gen_toks: 768", "max_gen_toks: 24"), encoding="utf-8")
    db = tmp_path_factory.mktemp("md-run") / "r.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KOBENCH_TASKS_DIR", str(root))
        result = run(RunConfig(model=str(tiny_model), tasks=["ko_md_translation"], limit=3, db=str(db),
                               device="cpu", batch_size="3"))
    assert result.status == "done"
    yield db, result.run_id


def test_task_scores_the_tiny_model_into_the_store(md_run: tuple[Path, int]) -> None:
    db, run_id = md_run
    docs = {d["id"]: d for d in read_md_translation(DATA / "test.jsonl")}
    store = open_store(db, readonly=True)
    with store.session() as session:
        samples = session.scalars(select(Sample).where(Sample.run_id == run_id).order_by(Sample.doc_id)).all()
        scores = {s.metric: s.value for s in session.scalars(select(Score).where(Score.run_id == run_id))}
    store.dispose()
    assert len(samples) == 3
    # a stratified subset: one document from each of the first three styles (sorted by name)
    assert sorted(s.metrics["_style"] for s in samples) == ["api_doc", "blog", "readme"]
    refs, hyps = [], []
    for sample in samples:
        doc = docs[sample.item_id]
        assert sample.target == doc["reference"]
        assert sample.prompt.startswith(doc["system"] + "\n\n### Korean\n")  # no chat template: the plain frame
        assert source_from_prompt(sample.prompt) == doc["source"]
        hyp = sample.output.strip()
        refs.append(doc["reference"])
        hyps.append(hyp)
        assert sample.metrics["chrf_sentence"] == pytest.approx(sacrebleu.sentence_chrf(hyp, [doc["reference"]]).score)
        assert sample.metrics["md_preservation"] == pytest.approx(preservation(doc["source"], hyp)["md_preservation"])
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert scores["md_preservation"] == pytest.approx(sum(s.metrics["md_preservation"] for s in samples) / 3)
    blog = next(s for s in samples if s.metrics["_style"] == "blog")
    assert scores["chrf_sentence[style=blog]"] == pytest.approx(blog.metrics["chrf_sentence"])


@pytest.mark.slow
def test_shipped_task_runs_unchanged_on_the_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    """The shipped YAML (768-token cap) end to end: slow on a CPU because the random model never stops early."""
    result = run(RunConfig(model=str(tiny_model), tasks=["ko_md_translation"], limit=2, db=str(tmp_path / "r.db"),
                           device="cpu"))
    assert result.status == "done" and result.n["ko_md_translation"] == 2
    assert set(result.scores["ko_md_translation"]) >= {"chrf", "bleu", "chrf_sentence", "md_preservation"}


def test_comet_finds_sources_in_prompts_or_the_data_file(md_run: tuple[Path, int]) -> None:
    from types import SimpleNamespace

    from harness.comet import _sources
    from harness.errors import KobenchError

    db, run_id = md_run
    docs = read_md_translation(DATA / "test.jsonl")
    framed = SimpleNamespace(prompt=f"Translate.\n\n### Korean\n{docs[0]['source']}\n\n### English\n",
                             item_id="whatever", doc_id=0, target="")
    # a chat prompt: the bare source inside a template, recovered from the data file by id
    chat = SimpleNamespace(prompt=f"<|user|>{docs[5]['source']}<|assistant|>", item_id=docs[5]["id"], doc_id=5,
                           target=docs[5]["reference"])
    store = open_store(db, readonly=True)
    try:
        assert _sources(store, run_id, [framed, chat]) == [docs[0]["source"], docs[5]["source"]]
        changed = SimpleNamespace(**{**vars(chat), "target": "an older reference"})
        with pytest.raises(KobenchError, match="neither in its stored prompt nor unchanged"):
            _sources(store, run_id, [changed])
    finally:
        store.dispose()


def test_comet_not_computed_without_its_environment(md_run: tuple[Path, int], tmp_path: Path) -> None:
    db, run_id = md_run
    before = file_digest(db)
    proc = kobench("comet", "score", "--run", str(run_id), "--db", str(db),
                   env={"KOBENCH_COMET_VENV": str(tmp_path / "no-venv")})
    assert proc.returncode == 1
    assert "COMET not computed" in proc.stderr and "kobench comet setup" in proc.stderr
    assert file_digest(db) == before
    as_json = kobench("comet", "score", "--run", str(run_id), "--db", str(db), "--json",
                      env={"KOBENCH_COMET_VENV": str(tmp_path / "no-venv")})
    reply = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and reply["status"] == "not_computed" and reply["system_score"] is None
    unknown = kobench("comet", "score", "--run", "999", "--db", str(db))
    assert unknown.returncode == 2 and "--run 999: no such run" in unknown.stderr
    assert file_digest(db) == before
