"""The page in a real browser: headless Chromium (Debian's chromium and
chromium-driver) driven by Selenium against a real server on 127.0.0.1.

Typing a sentence must bring its translation, the n-best list and the alignment
heat map; a screenshot is kept under the test's ``tmp_path`` and, when the
environment variable ``ARTIFACTS_DIR`` names a folder, there too. The model is the
smoke model, or the checkpoint that ``SERVE_CHECKPOINT`` names (to picture the
page with a trained model for the README).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from serve_helpers import running_server

from machine_translation.config.schema import DecodingConfig
from machine_translation.inference.translator import Translator
from machine_translation.serving.settings import ServeSettings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and its driver (apt-get install chromium chromium-driver)",
)
SENTENCE = "A little girl climbs into a wooden playhouse."


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1200,1100")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def page_translator(request):
    path = os.environ.get("SERVE_CHECKPOINT")
    if not path:  # (the smoke model trains only when asked for)
        yield request.getfixturevalue("serve_translator")
        return
    trained = Translator(path, "cpu", decoding=DecodingConfig(beam_size=5), nbest=5)
    yield trained
    trained.close()


def test_typing_shows_translation_nbest_and_heat_map(
    browser, page_translator, tmp_path
):
    with running_server(page_translator, ServeSettings()) as (url, _):
        browser.get(url)
        browser.find_element(By.ID, "source").send_keys(SENTENCE)
        wait = WebDriverWait(browser, 30)
        expected = page_translator.translate([SENTENCE])[0]
        wait.until(
            lambda b: b.find_element(By.ID, "translation").text == expected[0].text
        )
        cells = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#heatmap td"))
        layers = page_translator.model.config.decoder_layers
        source_tokens = len(page_translator.tokenizer.encode(SENTENCE))
        rows = browser.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr")
        assert len(cells) == len(rows) * source_tokens
        nbest = browser.find_elements(By.CSS_SELECTOR, "#nbest li .text")
        assert [item.text for item in nbest] == [t.text for t in expected]
        scores = browser.find_elements(By.CSS_SELECTOR, "#nbest li .score")
        assert [s.text for s in scores] == [f"{t.score:.3f}" for t in expected]
        layer = Select(browser.find_element(By.ID, "layer"))
        assert len(layer.options) == layers
        first = browser.find_element(By.CSS_SELECTOR, "#heatmap td").get_attribute(
            "title"
        )
        layer.select_by_index(0)  # another layer redraws the map
        wait.until(
            lambda b: (
                b.find_element(By.CSS_SELECTOR, "#heatmap td").get_attribute("title")
                != first
                or layers == 1
            )
        )
        assert browser.find_element(By.ID, "status").text == ""
        layer.select_by_index(layers - 1)
        screenshot = tmp_path / "serve_page.png"
        assert browser.save_screenshot(str(screenshot))
    if os.environ.get("ARTIFACTS_DIR"):
        target = Path(os.environ["ARTIFACTS_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, target / screenshot.name)
