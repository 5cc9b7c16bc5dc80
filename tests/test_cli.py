"""The `kobench` entry point in a subprocess: the JSON contracts, the ranking, exports and every error path."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_TASKS, file_digest, kobench, last_json_line
from tests.conftest import sql as _sql

ENV = {"KOBENCH_TASKS_DIR": str(FIXTURE_TASKS)}


@pytest.fixture(scope="module")
def populated_db(tiny_model: Path, tiny_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One store holding a base run and an adapter run on both fixture tasks."""
    db = tmp_path_factory.mktemp("cli") / "results.db"
    base = kobench("run", "--model", str(tiny_model), "--tasks", "ko_fixture_mc,ko_fixture_gen", "--db", str(db),
                   "--device", "cpu", "--json", env=ENV, check=True)
    adapter = kobench("run", "--model", str(tiny_model), "--adapter", str(tiny_adapter), "--tasks",
                      "ko_fixture_mc,ko_fixture_gen", "--db", str(db), "--device", "cpu", "--json", env=ENV,
                      check=True)
    return {"db": db, "base": last_json_line(base.stdout), "adapter": last_json_line(adapter.stdout)}


def test_run_json_contract(populated_db: dict, tiny_model: Path) -> None:
    out = populated_db["base"]
    assert set(out) == {"run_id", "model", "adapter", "hardware", "status", "scores", "n", "wall_s", "peak_mem_mb"}
    assert out["status"] == "done" and out["adapter"] is None and out["model"] == "tiny-llama"
    assert out["n"] == {"ko_fixture_mc": 6, "ko_fixture_gen": 4}  # the fixture files have 6 and 4 items
    assert 0.0 <= out["scores"]["ko_fixture_mc"]["acc"] <= 1.0
    assert out["peak_mem_mb"] > 0 and out["wall_s"] > 0


def test_show_json_ranks_by_average_of_main_metrics(populated_db: dict) -> None:
    rows = last_json_line(kobench("show", "--json", "--db", str(populated_db["db"]), env=ENV, check=True).stdout)
    assert len(rows) == 2
    expected = {}
    for key in ("base", "adapter"):
        scores = populated_db[key]["scores"]
        # main metrics: acc (mc) and exact_match (gen), both x100; the average is their mean
        values = [scores["ko_fixture_mc"]["acc"] * 100, scores["ko_fixture_gen"]["exact_match"] * 100]
        expected[key] = sum(values) / 2
    by_adapter = {r["adapter"] is not None: r for r in rows}
    assert by_adapter[False]["average"] == pytest.approx(expected["base"], abs=0.01)
    assert by_adapter[True]["average"] == pytest.approx(expected["adapter"], abs=0.01)
    assert by_adapter[True]["base_model"] == "tiny-llama"
    order = sorted(rows, key=lambda r: -r["average"])
    assert [r["rank"] for r in order] == [1, 2] or order[0]["average"] == order[1]["average"]


def test_export_scores_and_samples(populated_db: dict) -> None:
    db = str(populated_db["db"])
    csv_text = kobench("export", "--format", "csv", "--db", db, env=ENV, check=True).stdout
    header = csv_text.splitlines()[0].split(",")
    assert header == ["run_id", "model", "adapter", "hardware", "status", "task", "metric", "value", "stderr", "n"]
    as_json = json.loads(kobench("export", "--format", "json", "--db", db, env=ENV, check=True).stdout)
    run_id = populated_db["base"]["run_id"]
    acc = [r for r in as_json if r["run_id"] == run_id and r["metric"] == "acc" and r["task"] == "ko_fixture_mc"]
    assert acc[0]["value"] == pytest.approx(populated_db["base"]["scores"]["ko_fixture_mc"]["acc"])
    lines = kobench("export", "--run", str(run_id), "--samples", "--format", "jsonl", "--db", db, env=ENV,
                    check=True).stdout.splitlines()
    samples = [json.loads(line) for line in lines]
    assert len(samples) == 10
    assert set(samples[0]) == {"run_id", "task", "doc_id", "item_id", "prompt", "output", "target", "metrics"}
    mc = [s for s in samples if s["task"] == "ko_fixture_mc"]
    gold = [json.loads(line)["label"] for line in (FIXTURE_TASKS / "ko_fixture" / "mc.jsonl").read_text().splitlines()]
    assert [s["target"] for s in mc] == gold and all(isinstance(s["output"], int) for s in mc)
    # acc is 1 exactly when the chosen index is the gold index
    assert all(s["metrics"]["acc"] == float(s["output"] == s["target"]) for s in mc)


def test_tasks_and_models_listing(tiny_model: Path) -> None:
    tasks = last_json_line(kobench("tasks", "--json", env=ENV, check=True).stdout)
    counts = {t["task"]: t["splits"]["test"] for t in tasks}
    assert counts == {"ko_fixture_mc": 6, "ko_fixture_gen": 4}
    models = last_json_line(kobench("models", "--json", env=ENV, check=True).stdout)
    assert {m["alias"] for m in models["embedded"]} == {"gemma3-270m", "smollm2-135m"}


def _error(proc) -> str:  # noqa: ANN001
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


@pytest.mark.parametrize("case", ["unknown_model", "not_a_model_dir", "missing_data", "bad_data", "unknown_task",
                                  "limit", "batch", "adapter_mismatch"])
def test_user_mistakes_leave_the_store_unchanged(case: str, populated_db: dict, tiny_model: Path,
                                                 other_tiny_model: Path, tmp_path: Path) -> None:
    from tests.conftest import make_adapter

    db = populated_db["db"]
    before = file_digest(db)
    args = ["run", "--model", str(tiny_model), "--tasks", "ko_fixture_mc", "--db", str(db), "--device", "cpu"]
    if case == "unknown_model":
        args[2] = "gemma3-27m"
    elif case == "not_a_model_dir":
        args[2] = str(tmp_path)
    elif case == "missing_data":
        args += ["--data", f"ko_fixture_mc={tmp_path / 'nope.jsonl'}"]
    elif case == "bad_data":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"id": "x", "question": "q"}\n{not json}\n', encoding="utf-8")
        args += ["--data", f"ko_fixture_mc={bad}"]
    elif case == "unknown_task":
        args[4] = "ko_fixture_mcq"
    elif case == "limit":
        args += ["--limit", "-1"]
    elif case == "batch":
        args += ["--batch-size", "0"]
    elif case == "adapter_mismatch":
        args += ["--adapter", str(make_adapter(other_tiny_model, tmp_path / "lora48"))]
    line = _error(kobench(*args, env=ENV))
    expected = {"unknown_model": "Did you mean 'gemma3-270m'", "not_a_model_dir": "no config.json",
                "missing_data": "no such file", "bad_data": "line 2", "unknown_task": "Did you mean 'ko_fixture_mc'",
                "limit": "--limit -1", "batch": "--batch-size 0", "adapter_mismatch": "--adapter"}[case]
    assert expected in line
    assert file_digest(db) == before


def test_store_errors_exit_2(tiny_model: Path, tmp_path: Path) -> None:
    missing_dir = tmp_path / "nope" / "r.db"
    line = _error(kobench("run", "--model", str(tiny_model), "--tasks", "ko_fixture_mc", "--db", str(missing_dir),
                          env=ENV))
    assert "does not exist" in line and not missing_dir.exists()
    newer = tmp_path / "newer.db"
    kobench("show", "--db", str(newer), env=ENV)  # no store yet: refused read-only, nothing created
    assert not newer.exists()
    from harness.store import open_store

    open_store(newer).dispose()
    _sql(newer, "UPDATE kobench_meta SET value = '7' WHERE key = 'schema_version'")
    before = file_digest(newer)
    line = _error(kobench("show", "--db", str(newer), env=ENV))
    assert "schema version 7" in line
    line = _error(kobench("run", "--model", str(tiny_model), "--tasks", "ko_fixture_mc", "--db", str(newer),
                          "--device", "cpu", env=ENV))
    assert "newer kobench" in line and file_digest(newer) == before
    line = _error(kobench("show", "--db", "mysql+nodriver://u:pw@h/db", env=ENV))
    assert "pw" not in line


def test_screen_with_a_suite_runs_every_candidate(tiny_model: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    cands = tmp_path / "candidates.yaml"
    cands.write_text(f"- model: {tiny_model}\n- model: {tiny_model}\n  adapter: {tiny_adapter}\n", encoding="utf-8")
    proc = kobench("screen", "--candidates", str(cands), "--suite", "quick", "--db", str(tmp_path / "s.db"),
                   "--device", "cpu", "--json", env=ENV, check=True)
    rows = last_json_line(proc.stdout)
    assert len(rows) == 2 and sorted(r["rank"] for r in rows) == [1, 2]
    # the quick suite's multiple-choice subset is 6 items: the whole 6-item fixture task
    assert all(r["n_tasks"] == 2 for r in rows)
