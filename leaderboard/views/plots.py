"""Plots: score vs parameter count, score vs peak memory, zero-shot vs fine-tuned per task."""
from __future__ import annotations

import plotly.express as px
import streamlit as st

from leaderboard import data, ui

st.title("Plots")
url = ui.store().url
hardware = st.selectbox("Hardware profile", ["all", *ui.hardware_profiles(url)], key="plots_hw")
frame = ui.ranking(url, None if hardware == "all" else hardware, None, None, None)
if frame.empty:
    st.info("No finished runs in the store yet.")
    st.stop()
tasks = frame.attrs.get("tasks", [])
metric = st.selectbox("Score", ["average", *tasks], key="plots_metric")
hover = ["model", "precision"]

st.subheader(f"{metric} vs parameter count")
sized = frame.dropna(subset=["params", metric])
if len(sized):
    fig = px.scatter(sized, x="params", y=metric, color="type", symbol="hardware", hover_data=hover, text="model",
                     log_x=True, labels={"params": "parameters", metric: f"{metric} (0-100)"})
    fig.update_traces(textposition="top center")
    st.plotly_chart(fig, key="plot_params")
missing = len(frame) - len(sized)
if missing:
    st.caption(f"{missing} row(s) without a parameter count or score (e.g. ensembles) left out.")

st.subheader(f"{metric} vs peak memory")
measured = frame.dropna(subset=["peak_mem_mb", metric])
if len(measured):
    fig = px.scatter(measured, x="peak_mem_mb", y=metric, color="type", symbol="hardware", hover_data=hover,
                     text="model", labels={"peak_mem_mb": "peak memory (MB)", metric: f"{metric} (0-100)"})
    fig.update_traces(textposition="top center")
    st.plotly_chart(fig, key="plot_memory")
else:
    st.caption("No row has a peak memory figure.")

st.subheader("Zero-shot vs fine-tuned, per task")
pairs = data.finetune_pairs(frame)
if pairs.empty:
    st.caption("No fine-tuned (adapter) row has its base model on the same hardware profile.")
else:
    long = pairs.melt(id_vars=["task", "adapter", "base", "hardware"], value_vars=["zero_shot", "fine_tuned"],
                      var_name="setting", value_name="score")
    long["pair"] = long["adapter"] + " @ " + long["hardware"]
    fig = px.bar(long, x="task", y="score", color="setting", barmode="group", facet_row="pair",
                 labels={"score": "score (0-100)"})
    st.plotly_chart(fig, key="plot_finetune")
    st.dataframe(ui.plain(pairs), hide_index=True, key="finetune_pairs")
