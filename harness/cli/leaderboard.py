"""`kobench leaderboard`: serve the Streamlit dashboard (leaderboard/app.py) over a results store, read-only."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import make_url

from harness.cli import app
from harness.cli.common import DbOption
from harness.errors import KobenchError
from harness.paths import REPO_ROOT
from harness.store import open_store
from harness.store.db import normalize_url, redact_url

APP_SCRIPT = REPO_ROOT / "leaderboard" / "app.py"
HostOption = Annotated[str, typer.Option("--host", help="Address to bind (loopback by default; 0.0.0.0 exposes it)")]
PortOption = Annotated[int, typer.Option("--port", help="Port to serve on")]


def streamlit_command(db_url: str, host: str = "127.0.0.1", port: int = 8501,
                      app_script: Path = APP_SCRIPT) -> list[str]:
    """The `streamlit run` command line for the dashboard: headless, no usage statistics, no file watcher, no
    developer toolbar. A URL with a password is left out (it would show in `ps`): the app reads KOBENCH_DB then."""
    command = [sys.executable, "-m", "streamlit", "run", str(app_script), "--server.address", host,
               "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer"]
    return command if make_url(db_url).password else [*command, "--", "--db", db_url]


@app.command()
def leaderboard(db: DbOption = None, host: HostOption = "127.0.0.1", port: PortOption = 8501) -> None:
    """Serve the leaderboard dashboard (ranking, run detail, samples, compare, plots) over the store, read-only."""
    if not 0 < port < 65536:
        raise KobenchError(f"--port {port}: not a TCP port. Pass a number between 1 and 65535")
    url = normalize_url(db)
    # Fail here with one clear line (no such file, not a kobench store, newer schema) rather than in the browser.
    open_store(url, readonly=True).dispose()
    if not APP_SCRIPT.is_file():
        raise KobenchError(f"the dashboard script {APP_SCRIPT} is missing: reinstall kobench (pip install -e .)")
    command = streamlit_command(url, host, port)
    typer.echo(f"kobench leaderboard: http://{host}:{port} (store {redact_url(url)}, read-only)", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Replace this process, so stopping `kobench leaderboard` (Ctrl-C, SIGTERM) stops the server itself.
    os.execve(command[0], command, {**os.environ, "KOBENCH_DB": url})
