"""The leaderboard over a hand-made store: data frames, every page through Streamlit's AppTest, read-only use, CLI.

Expected values come from the per-sample lists in tests/leaderboard_fixture.py (mean x 100, hand-counted win rates),
not from the leaderboard's own code.
"""
from __future__ import annotations

import base64
import json
import re
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from streamlit.testing.v1 import AppTest

from harness.cli.leaderboard import streamlit_command
from harness.store import open_store
from leaderboard import data, ui
from tests.conftest import REPO, file_digest, kobench
from tests.leaderboard_fixture import (CPU, CTX_CATEGORIES, CTX_CORRECT, FAILED_ERROR, GPU, HON_POLITE, HOSTILE_OUTPUT,
                                       MD_CORPUS_CHRF, MD_SENTENCE_CHRF, LeaderboardFixture, build_leaderboard_store)

APP = str(REPO / "leaderboard" / "app.py")
CTX, HON, MD = "ko_context_inference", "ko_honorific", "ko_md_translation"
LORA = "alpha-7b+ko-lora"


def pct(values: list[float]) -> float:
    return sum(values) / len(values) * 100


@pytest.fixture(scope="module")
def fixture_store(tmp_path_factory: pytest.TempPathFactory) -> LeaderboardFixture:
    return build_leaderboard_store(tmp_path_factory.mktemp("leaderboard") / "results.db")


@pytest.fixture()
def store(fixture_store: LeaderboardFixture):
    handle = open_store(fixture_store.db, readonly=True)
    yield handle
    handle.dispose()


@pytest.fixture()
def app(fixture_store: LeaderboardFixture, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The app as `kobench leaderboard` starts it: `streamlit run leaderboard/app.py -- --db URL`."""
    monkeypatch.setattr(sys, "argv", [APP, "--db", str(fixture_store.db)])
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def open_page(at: AppTest, page: str, **query: object) -> AppTest:
    at.switch_page(f"views/{page}.py")
    for key, value in query.items():
        at.query_params[key] = str(value)
    at.run()
    assert not at.exception, at.exception
    return at


def unescape(cell: str) -> str:
    """st.table cells are Markdown-escaped (backslashes); this is the text a reader sees."""
    return re.sub(r"\\(.)", r"\1", cell)


def plotly_array(value: object) -> list:
    """Plotly JSON stores numeric arrays as {"dtype", "bdata": base64}; lists stay lists."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


def shown_table(at: AppTest) -> pd.DataFrame:
    table = at.table[0].value
    table.columns = [unescape(str(c)) for c in table.columns]
    return table.map(lambda v: unescape(str(v)))


# ---- data access (no Streamlit) ------------------------------------------------------------------------------------

def test_ranking_frame_scores_order_win_rates_and_delta(store) -> None:
    frame = data.ranking_frame(store)
    rows = {(r["model"], r["hardware"]): r for r in frame.to_dict("records")}
    lora, alpha, beta = rows[(LORA, GPU)], rows[("alpha-7b", GPU)], rows[("beta-1.3b", GPU)]
    assert lora[CTX] == pytest.approx(pct(CTX_CORRECT[LORA]))              # 9/10 -> 90
    assert lora[HON] == pytest.approx(pct(HON_POLITE[LORA]), abs=0.01)     # 5/6 -> 83.33
    assert lora[MD] == MD_CORPUS_CHRF[LORA]                                # corpus chrF, scale 1
    assert rows[("vote3", GPU)][CTX] == pytest.approx(pct(CTX_CORRECT["vote3"]))
    assert rows[("beta-1.3b", CPU)][CTX] == pytest.approx(pct(CTX_CORRECT["beta-1.3b@cpu"]))
    # averages of the rounded task scores: (90 + 83.33 + 58.8) / 3, (80 + 66.67 + 52.4) / 3, (50 + 33.33 + 31) / 3
    assert (lora["average"], alpha["average"], beta["average"]) == (77.38, 66.36, 38.11)
    # three-task rows first (by average), then the one-task rows: vote3 (80) and beta on the CPU profile (40)
    assert list(zip(frame["model"], frame["hardware"])) == [(LORA, GPU), ("alpha-7b", GPU), ("beta-1.3b", GPU),
                                                             ("vote3", GPU), ("beta-1.3b", CPU)]
    assert list(frame["rank"]) == [1, 2, 3, 4, 5]
    # win rates: ctx 90/80/80/50/40 -> lora 4/4, alpha and vote3 (2 + tie/2)/4, beta 1/4, cpu 0;
    # honorific and translation (3 rows each): lora 1, alpha 1/2, beta 0.
    assert lora["win_rate"] == 100.0
    assert alpha["win_rate"] == round((2.5 / 4 + 0.5 + 0.5) / 3 * 100, 1)
    assert beta["win_rate"] == round((1 / 4 + 0 + 0) / 3 * 100, 1)
    assert rows[("vote3", GPU)]["win_rate"] == 62.5 and rows[("beta-1.3b", CPU)]["win_rate"] == 0.0
    # the adapter against its base on the same profile: (90-80 + 83.33-66.67 + 58.8-52.4) / 3
    assert lora["delta_vs_base"] == pytest.approx((10 + 16.66 + 6.4) / 3, abs=0.01)
    assert lora["base"] == "alpha-7b" and pd.isna(alpha["delta_vs_base"])
    assert lora["type"] == "fine-tuned" and rows[("vote3", GPU)]["type"] == "ensemble"
    assert lora["precision"] == "bfloat16 / nf4" and lora["peak_mem_mb"] == 6120.0 and lora["tokens_per_s"] == 35.0
    assert "gamma-13b" not in set(frame["model"])  # its run failed


def test_ranking_intervals_come_from_the_per_sample_values(store) -> None:
    frame = data.ranking_frame(store, n_resamples=5000)
    alpha = frame[(frame["model"] == "alpha-7b")].iloc[0]
    ref = sps.bootstrap((np.array(CTX_CORRECT["alpha-7b"], dtype=float),), np.mean, n_resamples=5000,
                        method="percentile", random_state=np.random.default_rng(3)).confidence_interval
    # 10 items: the bounds are means of 10 zeros/ones, so two resamplings agree to within one item (10 points)
    assert alpha[f"{CTX} low"] == pytest.approx(ref.low * 100, abs=10)
    assert alpha[f"{CTX} high"] == pytest.approx(ref.high * 100, abs=10)
    assert alpha[f"{CTX} low"] < alpha[CTX] <= alpha[f"{CTX} high"]
    # chrF is a corpus metric: its interval is over the per-item chrf_sentence values, and the page says so
    sentence = MD_SENTENCE_CHRF["alpha-7b"]
    assert min(sentence) <= alpha[f"{MD} low"] < alpha[f"{MD} high"] <= max(sentence)
    assert "chrf_sentence" in frame.attrs["ci_notes"][MD] and "corpus" in frame.attrs["ci_notes"][MD]


def test_ranking_filters(store) -> None:
    cpu = data.ranking_frame(store, hardware=CPU)
    assert list(cpu["model"]) == ["beta-1.3b"] and cpu.attrs["tasks"] == [CTX]
    no_ensembles = data.ranking_frame(store, kinds=["model", "adapter"])
    assert "vote3" not in set(no_ensembles["model"]) and len(no_ensembles) == 4
    tuned = data.ranking_frame(store, kinds=["adapter"])
    assert list(tuned["model"]) == [LORA] and tuned["delta_vs_base"].iloc[0] is not None
    small = data.ranking_frame(store, params_b=(0.5, 2.0))
    assert set(small["model"]) == {"beta-1.3b", "vote3"}  # vote3 has no parameter count, so it stays
    only_ctx = data.ranking_frame(store, tasks=[CTX])
    # averages are now the ctx scores: 90, 80 (alpha-7b, vote3: name order on a tie), 50, 40
    assert list(only_ctx["model"]) == [LORA, "alpha-7b", "vote3", "beta-1.3b", "beta-1.3b"]
    assert list(only_ctx["average"]) == [90.0, 80.0, 80.0, 50.0, 40.0]


def test_run_scores_split_breakdowns(store, fixture_store: LeaderboardFixture) -> None:
    scores = data.run_scores_frame(store, fixture_store.run_ids["alpha-7b"])
    by_group = scores[(scores["task"] == CTX) & (scores["breakdown"] == "category")].set_index("group")["value"]
    correct = CTX_CORRECT["alpha-7b"]
    for category in set(CTX_CATEGORIES):
        picked = [c for c, cat in zip(correct, CTX_CATEGORIES) if cat == category]
        assert by_group[category] == pytest.approx(sum(picked) / len(picked))
    assert scores[(scores["task"] == MD) & (scores["metric"] == "chrf")]["main"].item()


def test_samples_frame_and_filters(store, fixture_store: LeaderboardFixture) -> None:
    frame = data.samples_frame(store, fixture_store.run_ids["beta-1.3b"], CTX)
    assert list(frame["score"]) == [v * 100 for v in CTX_CORRECT["beta-1.3b"]]
    assert list(frame["category"]) == CTX_CATEGORIES
    wrong = data.filter_samples(frame, below=100)
    assert len(wrong) == CTX_CORRECT["beta-1.3b"].count(0)
    assert list(data.filter_samples(frame, search="CTX-FX-03")["doc_id"]) == [3]  # case-insensitive id search
    md = data.samples_frame(store, fixture_store.run_ids[LORA], MD)
    assert md.attrs["basis"].sample_metric == "chrf_sentence" and list(md["score"]) == MD_SENTENCE_CHRF[LORA]
    assert md.loc[md["doc_id"] == 1, "output"].item() == HOSTILE_OUTPUT


def test_compare_accuracy_uses_mcnemar(store, fixture_store: LeaderboardFixture) -> None:
    paired = data.paired_items(store, fixture_store.run_ids["alpha-7b"], fixture_store.run_ids["beta-1.3b"], CTX)
    result = data.compare(paired)
    a, b = CTX_CORRECT["alpha-7b"], CTX_CORRECT["beta-1.3b"]
    a_only = sum(x == 1 and y == 0 for x, y in zip(a, b))  # items 1, 5, 9
    b_only = sum(x == 0 and y == 1 for x, y in zip(a, b))  # none
    assert (result.a_only, result.b_only) == (a_only, b_only) == (3, 0)
    assert result.p_value == pytest.approx(sps.binomtest(a_only, a_only + b_only, 0.5).pvalue)  # 2 x (1/2)^3
    assert (result.mean_a, result.mean_b, result.diff) == (pct(a), pct(b), pytest.approx(pct(a) - pct(b)))
    assert result.low <= result.diff <= result.high and result.test.startswith("McNemar")
    assert paired.attrs["warnings"] == []


def test_compare_graded_scores_uses_the_paired_permutation_test(store, fixture_store: LeaderboardFixture) -> None:
    paired = data.paired_items(store, fixture_store.run_ids[LORA], fixture_store.run_ids["beta-1.3b"], MD)
    result = data.compare(paired)
    diffs = np.array(MD_SENTENCE_CHRF[LORA]) - np.array(MD_SENTENCE_CHRF["beta-1.3b"])  # all four positive
    ref = sps.permutation_test((diffs,), np.mean, permutation_type="samples", n_resamples=np.inf)
    assert result.p_value == pytest.approx(ref.pvalue)  # 2/16: only all-plus and all-minus are as extreme
    assert result.diff == pytest.approx(diffs.mean()) and "permutation" in result.test


def test_finetune_pairs(store) -> None:
    pairs = data.finetune_pairs(data.ranking_frame(store)).set_index("task")
    assert set(pairs.index) == {CTX, HON, MD}
    assert pairs.loc[CTX, "zero_shot"] == 80.0 and pairs.loc[CTX, "fine_tuned"] == 90.0
    assert pairs.loc[MD, "delta"] == pytest.approx(MD_CORPUS_CHRF[LORA] - MD_CORPUS_CHRF["alpha-7b"])


def test_sandboxed_preview_escapes_model_html() -> None:
    snippet = ui.sandboxed_preview([("output", HOSTILE_OUTPUT)])
    assert snippet.startswith('<iframe sandbox="" ')
    assert "<script" not in snippet and "<b>" not in snippet  # only escaped forms reach the srcdoc
    inner = ui.render_markdown(HOSTILE_OUTPUT)
    assert "&lt;script&gt;" in inner and "<li>Pick a model</li>" in inner  # markdown renders, raw HTML does not
    assert ui.md_escape("a_b*c|d<e>") == r"a\_b\*c\|d\<e\>"


# ---- pages through AppTest ------------------------------------------------------------------------------------------

def test_ranking_page_shows_the_fixture_models_in_order(app: AppTest) -> None:
    table = shown_table(app)
    assert list(table["model"]) == [LORA, "alpha-7b", "beta-1.3b", "vote3", "beta-1.3b"]
    assert list(table["hardware"]) == [GPU, GPU, GPU, GPU, CPU]
    lora = table.iloc[0]
    assert lora[CTX].startswith(f"{pct(CTX_CORRECT[LORA]):.1f} [")       # "90.0 [low, high]"
    assert lora[HON].startswith(f"{pct(HON_POLITE[LORA]):.1f} [")        # "83.3 [..."
    assert lora[MD].startswith(f"{MD_CORPUS_CHRF[LORA]:.1f} [")
    assert lora["average"] == f"{(90 + 83.33 + 58.8) / 3:.1f}" == "77.4"
    assert (lora["base"], lora["Δ vs base"], lora["type"]) == ("alpha-7b", "+11.0", "fine-tuned")
    assert lora["params"] == "7.24B" and lora["precision"] == "bfloat16 / nf4"
    assert list(table["win rate"]) == ["100.0", "54.2", "8.3", "62.5", "0.0"]
    assert table.iloc[3][HON] == ui.MISSING  # the ensemble voted on one task only
    assert any("chrf_sentence" in unescape(c.value) for c in app.caption)


def test_ranking_page_filters_and_sorting(app: AppTest) -> None:
    app.selectbox(key="rank_hw").set_value(CPU).run()
    assert list(shown_table(app)["model"]) == ["beta-1.3b"]
    app.selectbox(key="rank_hw").set_value("all").run()
    app.multiselect(key="rank_kinds").unselect("ensemble").run()
    assert "vote3" not in list(shown_table(app)["model"])
    app.multiselect(key="rank_kinds").select("ensemble").run()
    app.multiselect(key="rank_tasks").set_value([CTX]).run()
    table = shown_table(app)
    assert list(table.columns[6:8]) == [CTX, "average"] and list(table["average"]) == ["90.0", "80.0", "80.0",
                                                                                        "50.0", "40.0"]
    app.selectbox(key="rank_sort").set_value("tokens/s").run()
    assert shown_table(app)["tok/s"].iloc[0] == "120.0"  # beta on the GPU profile is the fastest
    app.slider(key="rank_size").set_range(5.0, 7.5).run()
    assert set(shown_table(app)["model"]) == {"alpha-7b", LORA, "vote3"}


def test_run_detail_page(app: AppTest, fixture_store: LeaderboardFixture) -> None:
    open_page(app, "run_detail", run=fixture_store.run_ids["alpha-7b"])
    assert app.success[0].value.endswith("done")
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["model"] == "alpha-7b" and metrics["hardware profile"] == GPU
    assert metrics["parameters"] == "7.24B" and metrics["peak memory (MB)"] == "15210"
    frames = [d.value for d in app.dataframe]
    breakdown = next(f for f in frames if "group" in f.columns and "acc" in f.columns).set_index("group")
    assert breakdown.loc["반응", "acc"] == pytest.approx(1 / 3)  # alpha got items 3, 6 wrong, 9 right
    overall = next(f for f in frames if "chrf" in set(f.get("metric", []))).set_index("metric")
    assert overall.loc["chrf", "value"] == MD_CORPUS_CHRF["alpha-7b"]
    shown_json = [json.loads(j.value) for j in app.json]
    assert {"random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234} in shown_json
    assert any(j.get(HON) == "beef" * 16 for j in shown_json)  # task data hashes
    assert any(j.get(HON, {}).get("max_gen_toks") == 512 for j in shown_json if isinstance(j.get(HON), dict))


def test_run_detail_page_shows_a_failed_run_and_its_error(app: AppTest, fixture_store: LeaderboardFixture) -> None:
    open_page(app, "run_detail", run=fixture_store.run_ids["gamma-13b"])
    assert app.error[0].value.endswith("failed")
    assert FAILED_ERROR in [c.value for c in app.code]


def test_samples_page_shows_model_output_as_plain_text(app: AppTest, fixture_store: LeaderboardFixture) -> None:
    open_page(app, "samples", run=fixture_store.run_ids[LORA], task=MD, item=1)
    codes = [c.value for c in app.code]
    assert HOSTILE_OUTPUT in codes  # verbatim, in a code block
    for element in (*app.markdown, *app.caption, *app.get("html")):
        assert "pwned" not in str(getattr(element, "value", element.proto))
    app.toggle(key="samples_preview").set_value(True).run()
    frames = [e.proto.srcdoc for e in app.get("iframe")] or [e.proto.html for e in app.get("iframe")]
    assert len(frames) == 1 and frames[0].startswith('<iframe sandbox="" ') and "<script" not in frames[0]
    assert "Usage" in frames[0]  # the reference/output are there, rendered and escaped


def test_samples_page_search_and_wrong_only(app: AppTest, fixture_store: LeaderboardFixture) -> None:
    open_page(app, "samples", run=fixture_store.run_ids["beta-1.3b"], task=CTX)
    assert len(app.dataframe[0].value) == 10
    app.checkbox(key="samples_low").check().run()
    wrong = app.dataframe[0].value
    assert list(wrong["doc_id"]) == [i for i, ok in enumerate(CTX_CORRECT["beta-1.3b"]) if not ok]
    app.checkbox(key="samples_low").uncheck().run()
    app.text_input(key="samples_search").input("ctx-fx-07").run()
    assert list(app.dataframe[0].value["doc_id"]) == [7]


def test_compare_page(app: AppTest, fixture_store: LeaderboardFixture) -> None:
    ids = fixture_store.run_ids
    open_page(app, "compare", a=ids["alpha-7b"], b=ids["beta-1.3b"])
    app.selectbox(key="compare_task").set_value(CTX).run()
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["A mean"] == "80.00" and metrics["B mean"] == "50.00" and metrics["A - B"] == "+30.00"
    assert metrics["p-value"] == f"{sps.binomtest(3, 3, 0.5).pvalue:.4f}" == "0.2500"
    summary = " ".join(m.value for m in app.markdown)
    assert "McNemar" in summary and "3 items only A got right, 0 only B" in summary
    assert app.info and "noise" in app.info[0].value  # 3 discordant items cannot show a real gap
    app.checkbox(key="compare_only_diff").check().run()
    assert list(app.dataframe[0].value["doc_id"]) == [1, 5, 9]


def test_plots_page(app: AppTest) -> None:
    open_page(app, "plots")
    charts = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    assert len(charts) == 3
    names = {point for trace in charts[0]["data"] for point in plotly_array(trace["text"])}
    assert {LORA, "alpha-7b", "beta-1.3b"} <= names and "vote3" not in names  # no parameter count
    bars = {(t["name"], x): y for t in charts[2]["data"] for x, y in zip(plotly_array(t["x"]), plotly_array(t["y"]))}
    assert bars[("zero_shot", CTX)] == 80.0 and bars[("fine_tuned", CTX)] == 90.0


# ---- read-only use, CLI ---------------------------------------------------------------------------------------------

def test_using_every_page_leaves_the_store_untouched(fixture_store: LeaderboardFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    before = file_digest(fixture_store.db)
    monkeypatch.setattr(sys, "argv", [APP, "--db", str(fixture_store.db)])
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    ids = fixture_store.run_ids
    for page, query in [("run_detail", {"run": ids[LORA]}), ("samples", {"run": ids[LORA], "task": MD}),
                        ("compare", {"a": ids[LORA], "b": ids["alpha-7b"]}), ("plots", {})]:
        open_page(at, page, **query)
    assert file_digest(fixture_store.db) == before


def test_the_app_store_refuses_writes(fixture_store: LeaderboardFixture) -> None:
    handle = open_store(fixture_store.db, readonly=True)
    try:
        with pytest.raises(Exception, match="readonly|read-only"):
            with handle.engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM runs")
    finally:
        handle.dispose()
    assert sqlite3.connect(fixture_store.db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 6


def test_missing_store_is_a_clear_error_in_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [APP, "--db", str(tmp_path / "none.db")])
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert "no such results store" in at.error[0].value


def test_empty_store_pages_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty.db"
    open_store(empty).dispose()
    monkeypatch.setattr(sys, "argv", [APP, "--db", str(empty)])
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception and "kobench run" in at.info[0].value
    for page in ("run_detail", "samples", "compare", "plots"):
        open_page(at, page)
        assert at.info, page


def test_cli_refuses_a_missing_store_and_a_bad_port(tmp_path: Path) -> None:
    proc = kobench("leaderboard", "--db", str(tmp_path / "none.db"))
    assert proc.returncode == 2 and "no such results store" in proc.stderr and "Traceback" not in proc.stderr
    proc = kobench("leaderboard", "--port", "70000", "--db", str(tmp_path / "none.db"))
    assert proc.returncode == 2 and "--port 70000" in proc.stderr


def test_streamlit_command_binds_loopback_and_passes_the_store() -> None:
    command = streamlit_command("sqlite:////data/results.db")
    assert command[1:5] == ["-m", "streamlit", "run", str(REPO / "leaderboard" / "app.py")]
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--server.headless") + 1] == "true"
    assert command[-3:] == ["--", "--db", "sqlite:////data/results.db"]
    secret = streamlit_command("postgresql+psycopg://kb:hunter2@db/kobench")
    assert not any("hunter2" in part for part in secret)  # passed through KOBENCH_DB instead
