"""The built site as a person sees it: headless Chromium loads each page, its images decode, no console error.

``make docs`` builds ``site/``; ``make docs-check`` runs this module (and installs Debian's chromium
and chromium-driver first when they are missing). Each check serves ``site/`` on 127.0.0.1 with
Python's http.server on a free port, opens the landing page and every tutorial page, asserts that
every ``<img>`` decoded (``naturalWidth > 0``, after the page's images finished loading) and that
the browser logged no SEVERE console message, and saves a full-page screenshot to
``build/screenshots/``. The negative control serves a page with a broken image: it must fail the
same check. Without the site or without Chromium the tests skip and say which is missing.
"""

from __future__ import annotations

import base64
import functools
import http.server
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "site"
SHOTS = ROOT / "build" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (make docs-check installs them)")


def site_pages() -> list[str]:
    """URL paths of the landing page and every tutorial page of the built site."""
    tutorials = sorted(p.parent.name for p in (SITE / "tutorials").glob("[0-9][0-9]_*/index.html"))
    # the benchmarks page too: it shows BENCHMARKS.md's figures, published by the docs hook
    return ["", "benchmarks/", *[f"tutorials/{name}/" for name in tutorials]]


@contextmanager
def serve(folder: Path):
    """Serve ``folder`` on 127.0.0.1 at a free port (chosen by the OS); stopped on exit."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output to the failures
        pass


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


IMAGES_SETTLED = "return Array.from(document.images).every(i => i.complete)"
BROKEN_IMAGES = ("return Array.from(document.images).filter(i => !(i.naturalWidth > 0))"
                 ".map(i => (i.currentSrc || i.src).slice(0, 120))")
MAX_SHOT_HEIGHT = 16000  # px; Chromium cannot capture taller surfaces in one piece


def check_page(driver, url: str, screenshot: Path) -> list[str]:
    """Load ``url``; return what a reader would see wrong (broken images, console errors); save a screenshot."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(url)
    # scroll to the end and back, so that images further down are requested too
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(IMAGES_SETTLED))
    driver.execute_script("window.scrollTo(0, 0)")
    problems = [f"image did not decode: {src}" for src in driver.execute_script(BROKEN_IMAGES)]
    problems += [f"console {e['level']}: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    # a viewport as tall as the page, so that sticky parts (the navigation) are drawn whole
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    width, height = int(size["width"]), min(int(size["height"]), MAX_SHOT_HEIGHT)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    return problems


def tutorial_outputs_shown(driver, name: str) -> list[str]:
    """The executed notebook's outputs are on its page: some output at all, and each of its figures."""
    import nbformat

    nb = nbformat.read(ROOT / "build" / "tutorials" / f"{name}.ipynb", as_version=4)
    figures = sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
                  if any(kind.startswith("image/") for kind in out.get("data", {})))
    shown = driver.execute_script("return Array.from(document.images).filter(i => i.naturalWidth > 0).length")
    outputs = driver.execute_script("return document.querySelectorAll('.jp-OutputArea-output').length")
    problems = [] if outputs else ["no cell output on the page: was the notebook executed?"]
    if shown < figures:
        problems.append(f"{shown} decoded images on the page, but the executed notebook has {figures} figures")
    return problems


def shot_name(page: str) -> str:
    return (page.strip("/").replace("/", "_") or "index") + ".png"


@needs_browser
@pytest.mark.skipif(not (SITE / "index.html").exists(), reason="no site/: run make docs first")
def test_landing_and_tutorial_pages(browser):
    pages = site_pages()
    assert len(pages) >= 12, f"expected the landing and benchmarks pages and ten tutorials or more, got {pages}"
    failures = {}
    with serve(SITE) as base:
        for page in pages:
            problems = check_page(browser, base + page, SHOTS / shot_name(page))
            if page.startswith("tutorials/"):
                problems += tutorial_outputs_shown(browser, page.split("/")[1])
            if problems:
                failures[page or "index"] = problems
    assert not failures, "\n".join(f"{p}: {msgs}" for p, msgs in failures.items())


PIXEL = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


@needs_browser
def test_a_broken_image_fails_the_same_check(browser, tmp_path):
    """Negative control: the check must catch an image that does not decode; the same page without it passes."""
    head = '<!doctype html><html><head><link rel="icon" href="data:,"></head><body>'  # no favicon request
    good = f'<img alt="pixel" src="data:image/png;base64,{PIXEL}" width="20">'
    (tmp_path / "good.html").write_text(f"{head}<p>ok</p>{good}</body></html>")
    broken = '<img alt="gone" src="figures/missing.png">'
    (tmp_path / "bad.html").write_text(f"{head}<p>broken</p>{good}{broken}</body></html>")
    with serve(tmp_path) as base:
        assert check_page(browser, base + "good.html", tmp_path / "good.png") == []
        problems = check_page(browser, base + "bad.html", tmp_path / "bad.png")
    assert any("image did not decode" in p and "missing.png" in p for p in problems), problems
    assert any(p.startswith("console SEVERE") and "404" in p for p in problems), problems
    assert (tmp_path / "bad.png").stat().st_size > 0


@pytest.mark.skipif(not (SITE / "index.html").exists(), reason="no site/: run make docs first")
def test_api_reference_lists_every_pinned_name():
    """Each name of each public __all__ has an entry (its mkdocstrings anchor) on its module's API page."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("jetspec_docs_hooks_for_site", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    missing = []
    for module in hooks.PUBLIC_MODULES:
        page = (SITE / hooks._api_uri(module).removesuffix(".md") / "index.html").read_text(encoding="utf-8")
        missing += [f"{module}.{name}" for name in hooks._public_names(module)
                    if f'id="{hooks._target_path(module, name)}"' not in page]
    assert not missing, f"public names without an API entry: {missing}"
