"""The kobench leaderboard: a Streamlit dashboard (app.py, views/) over data access functions (data.py)."""
