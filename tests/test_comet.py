"""COMET for real: `kobench comet setup` makes the venv, a tiny COMET checkpoint is built offline inside it, and
`kobench comet score` stores what that checkpoint computes. Slow: creating the venv installs unbabel-comet.

Set KOBENCH_TEST_COMET_VENV to a venv made by `kobench comet setup` to skip creating a fresh one.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from harness.comet import venv_python
from harness.store import open_store
from harness.store.schema import Sample, Score, TaskResult
from harness.taskdata.md_translation import read_md_translation
from tests.conftest import REPO, file_digest
from tests.test_task_md_translation import kobench, md_run  # noqa: F401  (md_run: the stored tiny-model run)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

# A regression COMET model (the wmt22-comet-da architecture) on a 2-layer, 32-dim XLM-R encoder whose tokenizer is a
# sentencepiece-style unigram model trained here; saved as hparams.yaml + checkpoints/model.ckpt, the layout
# comet.load_from_checkpoint reads. The encoder is built from `pretrained_model` (a local path) without weights.
BUILD_CHECKPOINT = r'''
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from tokenizers import SentencePieceUnigramTokenizer, processors
from transformers import XLMRobertaConfig, XLMRobertaTokenizerFast

out = Path(sys.argv[1])
encoder = out / "encoder"
encoder.mkdir(parents=True)
lines = ["서울은 한국의 수도이다.", "Seoul is the capital of Korea.", "## 설치\n\n```bash\npip install brisket\n```",
         "## Installation", "설정 파일을 확인하세요.", "Check the config file.", "The API returns JSON."] * 20
unigram = SentencePieceUnigramTokenizer()
unigram.train_from_iterator(lines, vocab_size=150, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            unk_token="<unk>")
unigram._tokenizer.post_processor = processors.TemplateProcessing(
    single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
tokenizer = XLMRobertaTokenizerFast(tokenizer_object=unigram._tokenizer, bos_token="<s>", eos_token="</s>",
                                    sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                    mask_token="<mask>")
tokenizer.save_pretrained(encoder)
XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
                 eos_token_id=2).save_pretrained(encoder)

from comet.models import RegressionMetric

torch.manual_seed(0)
model = RegressionMetric(pretrained_model=str(encoder), load_pretrained_weights=False, local_files_only=True,
                         hidden_sizes=[16], layer="mix", pool="avg")
hparams = dict(model.hparams)
(out / "checkpoints").mkdir()
torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams,
            "pytorch-lightning_version": pl.__version__}, out / "checkpoints" / "model.ckpt")
(out / "hparams.yaml").write_text(yaml.safe_dump(hparams), encoding="utf-8")
'''

# The expected numbers, straight from unbabel-comet on triples the test builds itself.
REFERENCE_SCORES = r'''
import json, sys
from comet import load_from_checkpoint

model = load_from_checkpoint(sys.argv[1], local_files_only=True)
triples = json.loads(open(sys.argv[2], encoding="utf-8").read())
prediction = model.predict(triples, batch_size=2, gpus=0, progress_bar=False)
print(json.dumps({"scores": [float(s) for s in prediction.scores], "system": float(prediction.system_score)}))
'''


@pytest.fixture(scope="module")
def comet_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reuse = os.environ.get("KOBENCH_TEST_COMET_VENV")
    if reuse:
        return Path(reuse)
    venv = tmp_path_factory.mktemp("comet") / "venv"
    proc = kobench("comet", "setup", "--venv", str(venv))
    assert proc.returncode == 0, proc.stderr
    assert venv_python(venv).exists()
    return venv


def _in_venv(venv: Path, script: str, *args: str) -> str:
    proc = subprocess.run([str(venv_python(venv)), "-c", script, *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_comet_scores_a_stored_run(comet_venv: Path, md_run: tuple[Path, int], tmp_path: Path) -> None:  # noqa: F811
    db, run_id = md_run
    checkpoint = tmp_path / "tiny-comet"
    _in_venv(comet_venv, BUILD_CHECKPOINT, str(checkpoint))

    proc = kobench("comet", "score", "--run", str(run_id), "--db", str(db), "--venv", str(comet_venv),
                   "--model", str(checkpoint), "--json")
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reply["status"] == "ok" and reply["n"] == 3

    store = open_store(db, readonly=True)
    with store.session() as session:
        samples = session.scalars(select(Sample).where(Sample.run_id == run_id).order_by(Sample.doc_id)).all()
        rows = {s.metric: s for s in session.scalars(select(Score).where(Score.run_id == run_id))}
        details = session.scalar(select(TaskResult.details).where(TaskResult.run_id == run_id))
    store.dispose()
    docs = {d["id"]: d for d in read_md_translation(REPO / "tasks" / "ko_md_translation" / "data" / "test.jsonl")}
    triples = [{"src": docs[s.item_id]["source"], "mt": s.output.strip(), "ref": docs[s.item_id]["reference"]}
               for s in samples]
    triples_path = tmp_path / "triples.json"
    triples_path.write_text(json.dumps(triples, ensure_ascii=False), encoding="utf-8")
    expected = json.loads(_in_venv(comet_venv, REFERENCE_SCORES, str(checkpoint / "checkpoints" / "model.ckpt"),
                                   str(triples_path)).strip().splitlines()[-1])

    assert rows["comet"].value == pytest.approx(expected["system"], abs=1e-5)
    assert rows["comet"].n == 3
    assert [s.metrics["comet"] for s in samples] == pytest.approx(expected["scores"], abs=1e-5)
    for sample, value in zip(samples, expected["scores"]):
        style = sample.metrics["_style"]
        assert rows[f"comet[style={style}]"].value == pytest.approx(value, abs=1e-5)  # one sample per style
        assert "chrf_sentence" in sample.metrics  # the task's own per-sample metrics are kept
    assert details["comet"]["model"] == str(checkpoint)

    # scoring again replaces the rows rather than adding more
    again = kobench("comet", "score", "--run", str(run_id), "--db", str(db), "--venv", str(comet_venv),
                    "--model", str(checkpoint))
    assert again.returncode == 0, again.stderr
    store = open_store(db, readonly=True)
    with store.session() as session:
        metrics = session.scalars(select(Score.metric).where(Score.run_id == run_id)).all()
    store.dispose()
    assert metrics.count("comet") == 1

    # a model that is neither on disk nor in the local Hugging Face cache: not computed, nothing written
    before = file_digest(db)
    missing = kobench("comet", "score", "--run", str(run_id), "--db", str(db), "--venv", str(comet_venv),
                      "--model", "Unbabel/wmt22-comet-da", env={"HF_HOME": str(tmp_path / "empty-hf")})
    assert missing.returncode == 1
    assert "COMET not computed" in missing.stderr and "not in the local Hugging Face cache" in missing.stderr
    assert file_digest(db) == before
