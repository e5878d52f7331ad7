"""End to end: `lrf-optuna dashboard` in a subprocess, driven by headless Chromium.

Needs Chromium and its chromedriver (Debian: ``apt-get install chromium chromium-driver``;
other paths via ``CHROME_BIN`` / ``CHROMEDRIVER``). CI installs them; elsewhere the test is
skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from report_tests.test_report import copy_study, fake_finetune_study

pytestmark = pytest.mark.slow

PAGE_TIMEOUT = 90  # seconds; the dashboard's bundle is ~6 MB of JavaScript


def _first_existing(*candidates: str | None) -> str | None:
    for c in candidates:
        if c and Path(c).exists():
            return c
    return None


def _browser_paths() -> tuple[str, str]:
    binary = _first_existing(os.environ.get("CHROME_BIN"), "/usr/bin/chromium",
                             shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome"))
    driver = _first_existing(os.environ.get("CHROMEDRIVER"), "/usr/bin/chromedriver",
                             shutil.which("chromedriver"))
    if binary is None or driver is None:
        pytest.skip("headless browser test needs chromium and chromedriver "
                    f"(found browser={binary}, driver={driver}); Debian: apt-get install "
                    "chromium chromium-driver")
    return binary, driver


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tiny_study, tmp_path):
    """The dashboard serving a copy of the tiny study plus a faked fine-tuning study."""
    storage = copy_study(tiny_study, tmp_path / "db")
    jobs = fake_finetune_study(storage)
    port = _free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "lrf_optuna.cli", "dashboard", "--storage", storage,
           "--study-name", "tiny", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dashboard exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"dashboard did not answer in 60 s:\n{log.read_text()}")
                time.sleep(0.3)
        ids = {s["study_name"]: s["study_id"] for s in studies}
        url = re.search(r"open (http://\S+)", log.read_text())
        assert url is not None, log.read_text()
        yield {"base": base, "study_url": url.group(1), "ids": ids, "jobs": jobs,
               "study": optuna.load_study(study_name="tiny", storage=storage),
               "artifacts": tmp_path / "db" / "study_artifacts"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture
def browser(tmp_path):
    binary, driver_path = _browser_paths()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1400,1600",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_text(driver, text: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, PAGE_TIMEOUT).until(
        lambda d: text in d.find_element(By.TAG_NAME, "body").text)
    return str(driver.find_element(By.TAG_NAME, "body").text)


def test_dashboard_in_browser(server, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    study = server["study"]
    study_id = server["ids"]["tiny"]
    assert "tiny:finetune" in server["ids"]
    assert server["study_url"] == f"{server['base']}/dashboard/studies/{study_id}"
    assert server["artifacts"].is_dir()
    n_complete = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    n_front = len(study.best_trials)

    # the study page: Pareto-front plot with a point per trial
    browser.get(server["study_url"])
    points = "#graph-pareto-front .scatterlayer .point"
    WebDriverWait(browser, PAGE_TIMEOUT).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, points)) >= n_front)
    plot = browser.find_element(By.ID, "graph-pareto-front")
    assert "js-plotly-plot" in plot.get_attribute("class")
    assert plot.find_elements(By.CSS_SELECTOR, "svg.main-svg")
    n_points = len(browser.find_elements(By.CSS_SELECTOR, points))
    assert n_front <= n_points <= n_complete
    card = plot.find_element(By.XPATH, "./ancestor::*[contains(@class, 'MuiCard-root')][1]")
    assert "Pareto Front" in card.text
    assert "params" in card.text and "flops" in card.text  # the objectives' names
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "tiny (id=" in body and "History" in body
    shot = tmp_path / "dashboard_study.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000
    print(f"screenshot: {shot}")

    # the trial list: the selected search trial's user attributes
    job = server["jobs"][0]
    trial = study.trials[job["source_trial"]]
    browser.get(f"{server['base']}/dashboard/studies/{study_id}/trials"
                f"?numbers={trial.number}")
    text = _wait_text(browser, "compression_ratio")
    assert f"Trial {trial.number} (trial_id=" in text
    assert f"compression_ratio {trial.user_attrs['compression_ratio']}" in text
    assert f"params {trial.user_attrs['params']}" in text
    assert f"{len(study.trials)} Trials" in text
    browser.save_screenshot(str(tmp_path / "dashboard_trial.png"))

    # the fine-tuning study's job page
    browser.get(f"{server['base']}/dashboard/studies/{server['ids']['tiny:finetune']}"
                "/trials?numbers=0")
    text = _wait_text(browser, "val_acc_after")
    assert f"source_trial {job['source_trial']}" in text
    assert f"test_acc {job['test_acc']}" in text

    # the note written before serving
    browser.get(f"{server['base']}/dashboard/studies/{study_id}/note")
    text = _wait_text(browser, "LRF compression search")
    assert "Objectives" in text and "Resume or extend the search" in text
