"""The portal end to end in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium; never a browser download).

Starts ``python -m cadpipe serve`` on a free loopback port (own process group, always stopped), with the CXR bundle
copied into tmp with seeded *untrained* weights at 64x64. The browser opens the page, picks a synthetic CXR PNG
(the preview appears), uploads it, waits for the report, and checks the probability and the overlay image are
shown; then a corrupt DICOM shows its error in the page. Screenshots go to ``test-artifacts/`` in the repo root
(git-ignored); their paths are printed.

Set-up: ``scripts/browser_deps.sh`` installs the browser when root with apt; this test runs it when the browser
is missing and skips (with the reason) only when it still cannot be had.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from cadpipe.pipelines.portal.server_process import stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CXR = "cxr_pneumonia_classification"
OVERRIDES = {"image_size": 64, "use_clahe": False}
ARTIFACTS = os.path.join(REPO, "test-artifacts")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
START_TIMEOUT_S = 180
WAIT_S = 240


def _browser_available() -> str | None:
    """None when chromium + chromedriver are there (installing them via scripts/browser_deps.sh if needed), else
    the reason."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        out = subprocess.run(["bash", os.path.join(REPO, "scripts", "browser_deps.sh")], capture_output=True,
                             text=True, timeout=900)
        if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
            return f"Debian chromium/chromium-driver not installable here: {(out.stdout + out.stderr).strip()[-300:]}"
    import importlib.util

    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from cadpipe.data.synthetic.weights import copy_bundle_untrained

    reason = _browser_available()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("portal")
    bundle = copy_bundle_untrained(os.path.join(REPO, "bundles", CXR), tmp / CXR, OVERRIDES)
    port = _free_port()
    log_path = tmp / "server.log"
    cmd = [sys.executable, "-m", "cadpipe", "serve", "--port", str(port), "--bundles", str(bundle), "--device", "cpu",
           "--data-dir", str(tmp / "data")] + [f"--override={k}={str(v).lower()}" for k, v in OVERRIDES.items()]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not answer in {START_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "tmp": tmp, "log": log_path}
    finally:
        stop_process_group(proc)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,1600", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver, name: str) -> str:
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    driver.save_screenshot(path)
    print(f"screenshot: {path}")
    return path


def _cxr_png(path) -> str:
    from PIL import Image

    from cadpipe.data.synthetic.cxr import synthetic_cxr

    arr, _ = synthetic_cxr(128, pneumonia=True, rng=7)
    Image.fromarray((arr * 255).astype(np.uint8), mode="L").save(path)
    return str(path)


def test_upload_cxr_and_see_report(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    png = _cxr_png(server["tmp"] / "synthetic_cxr_upload.png")
    browser.get(server["url"] + "/")
    assert "cadpipe" in browser.title
    task = browser.find_element(By.ID, "task")
    assert CXR in [o.get_attribute("value") for o in task.find_elements(By.TAG_NAME, "option")]
    browser.find_element(By.ID, "files").send_keys(png)
    preview = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "#preview img"))
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return arguments[0].naturalWidth", preview) > 0)
    submit = browser.find_element(By.ID, "submit")
    assert submit.is_enabled()
    submit.click()
    try:
        WebDriverWait(browser, WAIT_S).until(EC.visibility_of_element_located((By.ID, "result")))
        overlay = browser.find_element(By.ID, "overlay")
        WebDriverWait(browser, 60).until(lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", overlay) > 0)
    finally:
        _screenshot(browser, "portal_report.png")
    assert browser.find_element(By.ID, "error").is_displayed() is False
    assert browser.find_element(By.ID, "upload-progress").get_attribute("value") == "100"
    # the overlay's caption says what it shows (as in the report)
    assert browser.find_element(By.ID, "overlay-caption").text.startswith("Grad-CAM for PNEUMONIA (")
    steps = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#steps li")]
    assert len(steps) == 5 and all(li.get_attribute("class") == "done"
                                   for li in browser.find_elements(By.CSS_SELECTOR, "#steps li")), steps
    table = browser.find_element(By.ID, "probabilities")
    assert table.is_displayed()
    cells = [td.text for td in table.find_elements(By.CSS_SELECTOR, "tbody td")]
    assert "PNEUMONIA" in cells, cells
    prob, threshold, call = cells[cells.index("PNEUMONIA") + 1: cells.index("PNEUMONIA") + 4]
    assert prob.endswith("%") and 0.0 <= float(prob[:-1]) <= 100.0 and threshold.endswith("%")
    assert call.split(": ")[1] in ("positive", "negative") and f"PNEUMONIA: {call.split(': ')[1]}" in \
        browser.find_element(By.ID, "summary").text  # the table's call is the findings' call
    summary = browser.find_element(By.ID, "summary").text
    assert "PNEUMONIA: " in summary and "operating threshold" in summary and "synthetic_cxr_upload.png" in summary
    # the result is scrolled into view
    pos = browser.execute_script("const r = document.getElementById('result').getBoundingClientRect();"
                                 "return [r.top, window.innerHeight, window.scrollY, document.body.scrollHeight];")
    assert pos[2] > 0 and 0 <= pos[0] < pos[1] / 2, pos
    href = browser.find_element(By.ID, "download-html").get_attribute("href")
    assert "/api/studies/" in href and href.endswith("/report")
    assert browser.find_element(By.ID, "download-pdf").is_displayed()
    # the full report (the cadpipe score report) inside the page, with its inlined overlay
    browser.switch_to.frame(browser.find_element(By.ID, "report-frame"))
    try:
        WebDriverWait(browser, 30).until(lambda d: "Computer-aided analysis report" in d.page_source)
        img = browser.find_element(By.CSS_SELECTOR, "img")
        assert browser.execute_script("return arguments[0].naturalWidth", img) > 0
        assert prob in browser.find_element(By.TAG_NAME, "body").text
    finally:
        browser.switch_to.default_content()


def test_bad_uploads_show_errors_in_page(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server["url"] + "/")
    notes = server["tmp"] / "notes.txt"
    notes.write_text("not an image")
    browser.find_element(By.ID, "files").send_keys(str(notes))
    error = browser.find_element(By.ID, "error")
    WebDriverWait(browser, 10).until(lambda d: error.is_displayed())
    assert "notes.txt: file type .txt is not accepted" in error.text
    assert not browser.find_element(By.ID, "submit").is_enabled()

    # a DICOM header the upload accepts, pixel data cut short: the job fails when loading it
    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    write_cxr_dicom(server["tmp"] / "synthetic_full.dcm", rows=64, cols=48)
    broken = server["tmp"] / "broken.dcm"
    broken.write_bytes((server["tmp"] / "synthetic_full.dcm").read_bytes()[:-3000])
    browser.find_element(By.ID, "files").clear()
    browser.find_element(By.ID, "files").send_keys(str(broken))
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "submit").is_enabled())
    assert "browser cannot preview" in browser.find_element(By.ID, "preview").text
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "broken.dcm: cannot load" in d.find_element(By.ID, "error").text)
    assert "failed" in browser.find_element(By.CSS_SELECTOR, "#steps li.failed").text
    _screenshot(browser, "portal_error.png")
    with urllib.request.urlopen(server["url"] + "/api/health", timeout=5) as r:  # still up
        assert r.status == 200
    assert "broken.dcm" not in server["log"].read_text()  # uploaded names stay out of the server log
