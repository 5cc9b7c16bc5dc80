"""The kobench leaderboard: `kobench leaderboard --db URL` runs `streamlit run leaderboard/app.py -- --db URL`.

The pages (views/) are thin: each reads DataFrames from leaderboard.data through the cached calls in leaderboard.ui,
over a store opened read-only.
"""
from __future__ import annotations

import sys
from pathlib import Path

try:
    import leaderboard.ui  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: streamlit put only leaderboard/ on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st

from leaderboard import ui

st.set_page_config(page_title="kobench leaderboard", layout="wide")
page = st.navigation([
    st.Page("views/ranking.py", title="Ranking", default=True),
    st.Page("views/run_detail.py", title="Model / run detail"),
    st.Page("views/samples.py", title="Samples"),
    st.Page("views/compare.py", title="Compare runs"),
    st.Page("views/plots.py", title="Plots"),
])
st.sidebar.caption(f"store (read-only): {ui.md_escape(ui.store().display_url)}")
ui.reload_button()
page.run()
