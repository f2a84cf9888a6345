"""The demo's real page in headless Debian chromium, driven by playwright.

Screenshots go to the test's tmp dir, and the Generate tab also to $WAVELM_SCREENSHOT when set
(the Score tab beside it, as <name>-score.png): the README's pictures.
"""
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                       reason=f"Debian chromium not installed at {CHROMIUM} (apt-get install chromium)"),
]
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no `playwright install`)")

from test_demo import serve, sine, tiny_model  # noqa: E402

TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    demo, url = serve(tiny_model(tmp_path_factory.mktemp("ckpt")))
    try:
        yield url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(url):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#generate-btn")
        yield page
        browser.close()


def screenshot(page, tmp_path, name, env_suffix=""):
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    target = os.environ.get("WAVELM_SCREENSHOT")
    if target:
        t = Path(target)
        t = t.with_name(t.stem + env_suffix + (t.suffix or ".png"))
        t.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(t), full_page=True)


def fetch(page, href):
    """Bytes of a URL the page offers (same origin, through the page's own session)."""
    resp = page.request.get(href if "://" in href else page.url.rstrip("/") + "/" + href.lstrip("/"))
    assert resp.ok, f"{href}: HTTP {resp.status}"
    return resp.body()


def test_generate_plays_and_offers_a_decodable_wav(page, tmp_path):
    seconds = page.locator("#seconds input[type=number]")
    seconds.fill("0.5")
    seconds.press("Enter")
    page.click("#generate-btn")
    page.wait_for_function("document.querySelector('#gen-status')?.innerText.includes('Done')")
    link = page.locator("#sample-1 a[download]").first
    link.wait_for(state="attached")
    x, sr = sf.read(io.BytesIO(fetch(page, link.get_attribute("href"))), dtype="int16")
    assert sr == 16000 and len(x) == 8000 and np.abs(x).max() > 0
    screenshot(page, tmp_path, "generate")


def test_score_tab_shows_bits_per_sample(page, tmp_path):
    page.get_by_role("tab", name="Score").click()
    page.locator("#score-audio input[type=file]").set_input_files(sine(tmp_path / "a.wav", 1.0))
    page.locator("#score-audio audio").first.wait_for(state="attached")
    page.click("#score-btn")
    summary = page.locator("#score-summary")
    summary.get_by_text("bits per sample").wait_for()
    assert float(page.locator("#bps input").input_value()) > 0
    page.locator("#score-plot img").first.wait_for()
    screenshot(page, tmp_path, "score", env_suffix="-score")


def test_bad_upload_shows_an_error_in_the_page(page, tmp_path):
    page.get_by_role("tab", name="Score").click()
    bad = tmp_path / "notes.wav"  # the page only takes audio/* files: a text file named .wav
    bad.write_text("not audio")
    page.locator("#score-audio button[aria-label='Clear']").first.click()
    page.locator("#score-audio input[type=file]").set_input_files(str(bad))
    page.click("#score-btn")
    page.get_by_text("cannot read this file as audio").first.wait_for()
    screenshot(page, tmp_path, "error", env_suffix="-error")


def test_model_tab_shows_checkpoint_size_and_card(page, tmp_path):
    page.get_by_role("tab", name="Model").click()
    info = page.locator("#model-info")
    info.get_by_text("white noise").wait_for()
    assert "parameters" in info.inner_text() and "7.950" in info.inner_text()
    page.get_by_text("Trained on nothing at all.").wait_for()
    screenshot(page, tmp_path, "model", env_suffix="-model")
