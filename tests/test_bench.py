"""The GPU benchmark scripts on the CPU: their --tiny modes run end to end and write the report the docs quote."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def _bench(script: str, out: Path, *args: str) -> dict:
    env = {**os.environ, "OUT": str(out), "KOBENCH_CACHE": str(out / "cache")}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((out / script.replace(".py", ".json")).read_text(encoding="utf-8"))


def test_eval_speed_tiny_matches_stock_lm_eval(tmp_path: Path) -> None:
    """kobench's generation path against stock lm-eval on a 2-layer model in fp32: the same texts and choices."""
    report = _bench("eval_speed.py", tmp_path, "--tiny", "--tasks", "ko_legal_mcq,ko_legal_mcq_gen", "--items", "2",
                    "--stock-batch-size", "2", "--control-items", "0")
    model = report["models"][0]
    generation, choice = model["outputs"]["generation"], model["outputs"]["multiple_choice"]
    assert generation["items"] == 2 and generation["identical"] == 2
    assert choice["docs"] == 2 and choice["same_choice"] == 2
    assert model["stock"]["generated_tokens"] > 0 and model["kobench"]["generated_tokens"] > 0
    assert not report["failed"]


def test_finetune_qlora_tiny_compares_plain_trl_and_kobench(tmp_path: Path) -> None:
    """Both sides train kobench's task training records, 4 x 4 examples a step, without LoRA dropout: trl pads
    its micro-batches, kobench packs each step without padding, and the losses agree step by step."""
    report = _bench("finetune_qlora.py", tmp_path, "--tiny", "--steps", "4", "--warmup", "1", "--lora-dropout", "0",
                    "--sides", "plain,kobench")
    plain, kobench = report["sides"]["plain"], report["sides"]["kobench"]
    assert report["data"] == "real" and "ko_legal_qa" in report["tasks"] and report["examples"]["train"] > 500
    assert plain["steps"] == kobench["steps"] == 4
    assert plain["steady_tokens_per_s"] > 0 and kobench["steady_tokens_per_s"] > 0
    # trl: 4 padded micro-batches a step, a good share of them padding; kobench: fewer passes, none
    assert plain["passes_per_step"] == 4 and plain["pad_fraction"] > 0.1
    assert kobench["batching"] == "padding-free" and kobench["pad_fraction"] == 0 and kobench["passes_per_step"] < 4
    assert kobench["loss_vs_plain"]["steps_compared"] == 4
    # the same examples and weights in fp32: equal up to summation order
    assert kobench["loss_vs_plain"]["max_rel_diff"] < 1e-5


def test_decode_graph_tiny_static_loop_equals_generate(tmp_path: Path) -> None:
    """The decode bench on a 2-layer fp32 model: kobench's static-cache loop writes generate's tokens."""
    report = _bench("decode_graph.py", tmp_path, "--tiny", "--repeats", "1")
    runs = report["models"][0]["runs"]
    assert [r["batch"] for r in runs] == [1, 4]
    for run in runs:
        assert run["static"]["rows_equal_to_generate"] == run["batch"]
        assert run["static"]["tokens_equal_to_generate"] == run["batch"] * run["new"]
        assert run["generate"]["ms_per_step"] > 0 and run["floor_ms"] > 0
