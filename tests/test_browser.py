"""The page in a real browser: headless Chromium driven by Selenium with Debian's chromedriver.

Skipped, with the reason, only where chromium or chromedriver is not installed (``.ci/run``
installs both with apt-get).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import tiny_run
from server_process import ServerProcess

from jaxcolor import data

pytestmark = pytest.mark.slow

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip(f"no browser: chromium={CHROMIUM}, chromedriver={DRIVER}; install them with "
                "`apt-get install chromium chromium-driver` (.ci/run does)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only where a browser exists
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1100"):
        options.add_argument(arg)
    # The driver is given explicitly, so Selenium Manager never tries to download one.
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_page_colorizes_an_upload(tmp_path_factory, tmp_path, browser):
    run = tiny_run(tmp_path_factory, "lab_gan", trained=False)
    server = ServerProcess(run)
    try:
        photo = data.load_image("skimage:chelsea")  # a real photo, 451 x 300
        height, width = photo.shape[:2]
        good = tmp_path / "chelsea.png"
        import cv2

        assert cv2.imwrite(str(good), np.ascontiguousarray(photo[..., ::-1]))
        bad = tmp_path / "notes.jpg"
        bad.write_text("this is not a photo\n")

        browser.get(server.url)
        wait = WebDriverWait(browser, 120)
        wait.until(lambda d: "step 1" in d.find_element(By.ID, "model").text)
        health = server.health()
        model_box = browser.find_element(By.ID, "model").text
        assert f"trained at {health['image_size']} px" in model_box
        for name in (health["model"].get("metrics") or {}).get("model", {}):
            assert name in model_box  # the page shows the same numbers as /api/health
        assert browser.find_element(By.ID, "render-size").get_attribute("value") == str(
            health["image_size"])
        # The colour strength slider starts at the model's default; its value reaches the API.
        slider = browser.find_element(By.ID, "colour-strength")
        assert float(slider.get_attribute("value")) == health["colour_strength"]
        assert float(slider.get_attribute("max")) == health["max_colour_strength"]
        browser.execute_script("""
            window.sent = [];
            const original = window.fetch;
            window.fetch = (url, options) => { window.sent.push(String(url));
                                                return original(url, options); };
            arguments[0].value = 0.25;
            arguments[0].dispatchEvent(new Event("input"));""", slider)
        assert browser.find_element(By.ID, "colour-strength-value").text == "0.25"

        browser.find_element(By.ID, "files").send_keys(f"{good}\n{bad}")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 2 and not
                   d.find_elements(By.CSS_SELECTOR, ".card[data-state=queued], "
                                                    ".card[data-state=working]"))
        cards = {c.find_element(By.CLASS_NAME, "name").text: c
                 for c in browser.find_elements(By.CSS_SELECTOR, ".card")}
        done = cards["chelsea.png"]
        assert done.get_attribute("data-state") == "done"
        result = done.find_element(By.CSS_SELECTOR, "img.result")
        size = browser.execute_script("return [arguments[0].naturalWidth, "
                                      "arguments[0].naturalHeight]", result)
        assert size == [width, height]
        link = done.find_element(By.CLASS_NAME, "download")
        assert link.get_attribute("download") == "chelsea-colorized.png"
        assert link.get_attribute("href").startswith("blob:")

        failed = cards["notes.jpg"]
        assert failed.get_attribute("data-state") == "error"
        message = failed.find_element(By.CLASS_NAME, "error").text
        assert "notes.jpg" in message and "not a decodable image" in message
        assert "Traceback" not in browser.page_source
        assert browser.find_element(By.ID, "progress-text").text == "2 of 2 done"
        sent = browser.execute_script("return window.sent")
        assert len(sent) == 2 and all("colour_strength=0.25" in url for url in sent), sent
        # Moving the slider repaints what is done, at the new strength.
        browser.execute_script("""arguments[0].value = 0;
            arguments[0].dispatchEvent(new Event("change"));""", slider)
        wait.until(lambda d: d.find_element(By.ID, "progress-text").text == "3 of 3 done")
        sent = browser.execute_script("return window.sent")
        assert len(sent) == 3 and "colour_strength=0&" in sent[-1] + "&", sent

        Select(browser.find_element(By.ID, "view")).select_by_value("slider")
        assert done.find_element(By.CLASS_NAME, "compare").is_displayed()
        assert not done.find_element(By.CLASS_NAME, "pair").is_displayed()
        Select(browser.find_element(By.ID, "view")).select_by_value("side")

        shot = tmp_path / "page.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"screenshot: {shot}")
    finally:
        server.stop()
