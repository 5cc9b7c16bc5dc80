"""The leaderboard's pages, each a Streamlit script registered with st.navigation in leaderboard/app.py."""
