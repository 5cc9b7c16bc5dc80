"""`kobench leaderboard` in a real browser: the served app, driven by headless Chromium through Selenium.

Needs Debian's chromium + chromium-driver; the setup installs them with scripts/install_system_deps.sh when missing and
skips (saying why) only when that fails. Leaves a screenshot at artifacts/leaderboard.png.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import REPO, file_digest
from tests.leaderboard_fixture import CPU, GPU, HOSTILE_OUTPUT, LeaderboardFixture, build_leaderboard_store

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = REPO / "artifacts" / "leaderboard.png"
CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1600,1000"]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        proc = subprocess.run(["bash", str(REPO / "scripts" / "install_system_deps.sh")], capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != 0 or not CHROMIUM.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            pytest.skip(f"chromium could not be installed by scripts/install_system_deps.sh: {tail[0]}")
    return CHROMIUM


@pytest.fixture(scope="module")
def fixture_store(tmp_path_factory: pytest.TempPathFactory) -> LeaderboardFixture:
    return build_leaderboard_store(tmp_path_factory.mktemp("browser") / "results.db")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(fixture_store: LeaderboardFixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`kobench leaderboard` on a free loopback port; yields its base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "leaderboard.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harness", "leaderboard", "--db", str(fixture_store.db),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"kobench leaderboard exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"kobench leaderboard did not answer on {url} within 90 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()  # the CLI exec'd streamlit, so this pid is the server itself
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def browser(chromium: Path, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _ranking_rows(driver: webdriver.Chrome) -> list[list[str]]:
    cells = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stTable"] table tbody tr')
    return [[c.text.strip() for c in row.find_elements(By.CSS_SELECTOR, "th, td")] for row in cells]


def test_ranking_page_in_chromium(server: str, browser: webdriver.Chrome, fixture_store: LeaderboardFixture) -> None:
    before = file_digest(fixture_store.db)
    browser.get(server)
    WebDriverWait(browser, 60).until(lambda d: len(_ranking_rows(d)) == 5)
    headers = [h.text.strip() for h in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stTable"] thead th')]
    rows = [dict(zip(headers, row)) for row in _ranking_rows(browser)]
    # fixture order: three-task rows by average (77.4, 66.4, 38.1), then the one-task rows (80.0, 40.0)
    assert [(r["model"], r["hardware"]) for r in rows] == [
        ("alpha-7b+ko-lora", GPU), ("alpha-7b", GPU), ("beta-1.3b", GPU), ("vote3", GPU), ("beta-1.3b", CPU)]
    assert [r["average"] for r in rows] == ["77.4", "66.4", "38.1", "80.0", "40.0"]
    assert rows[0]["base"] == "alpha-7b" and rows[0]["Δ vs base"] == "+11.0"
    assert rows[0]["ko_context_inference"].startswith("90.0 [")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    assert file_digest(fixture_store.db) == before


def test_samples_page_shows_model_html_as_text(server: str, browser: webdriver.Chrome,
                                               fixture_store: LeaderboardFixture) -> None:
    run_id = fixture_store.run_ids["alpha-7b+ko-lora"]
    browser.get(f"{server}/samples?run={run_id}&task=ko_md_translation&item=1")
    first_line = HOSTILE_OUTPUT.splitlines()[0]
    WebDriverWait(browser, 60).until(
        lambda d: any(first_line in c.text for c in d.find_elements(By.CSS_SELECTOR, '[data-testid="stCode"]')))
    assert browser.execute_script("return window.pwned === undefined")
    bold = [b.text for b in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] b')]
    assert "Usage" not in bold  # the <b> a model wrote is text, not an element
