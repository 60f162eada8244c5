"""The demo page in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven by selenium) types
a prompt, presses Generate, and waits for the page's video to load; the screenshot is written to
$MOVIEGEN_DEMO_SCREENSHOT (README's docs/images/demo_page.png) or the test's folder.

    apt-get install -y chromium chromium-driver && pip install selenium
    python -m pytest -m browser tests/browser

Not in the default run (`-m "not browser"` in pyproject.toml): CI installs no browser.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.harness import run_distributed
from tests.test_demo import _export_job, free_port, serve

pytestmark = pytest.mark.browser
webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
DRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(DRIVER is None, reason="apt-get install chromium chromium-driver")
def test_a_generation_in_the_browser_shows_the_video(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    run_distributed(_export_job, world_size=1, args=(str(tmp_path / "export"),))
    port = free_port()
    server = serve(tmp_path / "export", tmp_path / "videos", port)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1200"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)
        prompt = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#prompt textarea")))
        prompt.clear()
        prompt.send_keys('a red ball bouncing on a sign that says "HI"')
        browser.find_element(By.CSS_SELECTOR, "#generate").click()
        video = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#video video")))
        wait.until(lambda _: browser.execute_script("return arguments[0].readyState >= 1", video))
        duration = browser.execute_script("return arguments[0].duration", video)
        sidecar = browser.find_element(By.CSS_SELECTOR, "#sidecar").text
        shot = Path(os.environ.get("MOVIEGEN_DEMO_SCREENSHOT", tmp_path / "demo_page.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(shot))
    finally:
        browser.quit()
        server.terminate()
        server.wait(timeout=30)
    assert duration == pytest.approx(2.0, abs=0.2)  # the tiny recipe's bucket: 32 frames at 16 fps
    assert "FPS-16 a red ball bouncing" in sidecar and "linear_quadratic" in sidecar
