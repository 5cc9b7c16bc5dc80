"""Model / run detail: every metric (per-category breakdowns included) and the run's provenance."""
from __future__ import annotations

import streamlit as st

from leaderboard import data, ui

st.title("Model / run detail")
store = ui.store()
run_id = ui.run_picker(ui.runs(store.url), key="detail_run")
if run_id is None:
    st.stop()

info = data.run_provenance(store, run_id)
model = info["model"]
status = f"run {run_id}: {info['status']}"
if info["status"] == "done":
    st.success(status)
else:
    st.error(status)
if info["error"]:
    st.caption("error")
    st.code(info["error"], language=None, wrap_lines=True)

cols = st.columns(4)
cols[0].metric("model", model["name"])
cols[1].metric("kind", data.KIND_LABELS.get(model["kind"], model["kind"]))
cols[2].metric("hardware profile", info["hardware"])
cols[3].metric("parameters", ui.fmt_params(model["n_params"]))
figures = info["hardware_figures"]
cols = st.columns(4)
cols[0].metric("peak memory (MB)", ui.fmt_number(figures["peak_mem_mb"], 0))
cols[1].metric("generated tokens/s", ui.fmt_number(figures["gen_tokens_per_s"]))
cols[2].metric("prompt tokens/s", ui.fmt_number(figures["prompt_tokens_per_s"]))
cols[3].metric("wall time (s)", ui.fmt_number(figures["wall_s"]))

st.header("Scores")
scores = data.run_scores_frame(store, run_id)
if scores.empty:
    st.info("This run stored no scores.")
for task, group in scores.groupby("task", sort=False):
    st.subheader(task)
    overall = group[group["breakdown"].isna()][["metric", "value", "stderr", "n", "main"]]
    st.dataframe(overall, hide_index=True, key=f"scores_{task}")
    per_group = group[group["breakdown"].notna()]
    if len(per_group):
        table = per_group.pivot_table(index=["breakdown", "group"], columns="metric", values="value", aggfunc="first")
        counts = per_group.groupby(["breakdown", "group"])["n"].max()
        st.caption("per-category breakdown (mean of the per-sample metric within each group)")
        st.dataframe(table.assign(n=counts).reset_index(), hide_index=True, key=f"breakdown_{task}")

st.header("Tasks")
st.dataframe(data.task_results_frame(store, run_id), hide_index=True, key="task_results")

st.header("Provenance")
left, right = st.columns(2)
with left:
    st.caption("model")
    st.json(model, expanded=True)
    st.caption("versions")
    st.json(info["versions"])
    st.caption("seeds")
    st.json(info["seeds"])
with right:
    st.caption("generation config")
    st.json(info["generation_config"])
    st.caption("task data hashes (sha256)")
    st.json(info["data_hashes"])
    st.caption("task versions")
    st.json(info["task_versions"])
    st.caption("run config")
    st.json(info["config"], expanded=False)
st.caption(f"started {info['started_at']} UTC, ended {info['ended_at'] or '-'} UTC, host {figures['host'] or '-'}")
if info["chat_template"]:
    with st.expander("chat template"):
        st.code(info["chat_template"], language="jinja", wrap_lines=True)
