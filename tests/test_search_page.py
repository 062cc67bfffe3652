"""The search page in a real headless browser: Debian's Chromium driven by Selenium (never a
downloaded browser or driver), against the service on 127.0.0.1. Fails, never skips, without them."""

import base64
import io
import os

import numpy as np
import pytest
from PIL import Image

from dual_encoder.evaluation.embedders import load_embedder
from dual_encoder.search import build_index
from dual_encoder.search.service import BackgroundServer, create_app, image_id
from dual_encoder.testing import colour_image, shared_colour_model, write_colour_folders

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 30


def png_bytes(colour: str, seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(colour_image(colour, np.random.default_rng(seed))).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    embedder = load_embedder(str(shared_colour_model(tmp_path_factory)), progress=False)
    photos = write_colour_folders(tmp_path_factory.mktemp("page") / "photos", ["red", "blue", "green"], per_class=3, seed=6)
    index = tmp_path_factory.mktemp("page_index") / "idx"
    build_index(embedder, photos, index)
    with BackgroundServer(create_app(embedder, index)) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"the page test drives Debian's Chromium through Selenium and {' and '.join(missing)} is missing: "
                    "apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never go looking for a browser online
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1280,1000", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--disable-default-apps",
                         "--proxy-server=http://127.0.0.1:9"):  # anything but loopback fails: the page must need nothing else
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(WAIT_S)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    status = lambda: driver.find_element("id", "status").text  # noqa: E731
    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d), message=f"{what}; status line: {status()!r}")


def shown(driver) -> list[dict]:
    """What the grid shows, once the search is done and every result image has loaded."""
    wait_for(driver, lambda d: d.find_element("id", "status").get_attribute("data-state") == "done", "search done")
    wait_for(driver, lambda d: d.execute_script(
        "const images = [...document.querySelectorAll('#results .result img')];"
        "return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);"), "result images loaded")
    return driver.execute_script(
        "return [...document.querySelectorAll('#results .result')].map(r => ({id: r.dataset.id, path: r.dataset.path,"
        " score: r.querySelector('.score').textContent, width: r.querySelector('img').naturalWidth}));")


def folders(results) -> list[str]:
    return [r["path"].split("/")[0] for r in results]


def test_a_shared_link_opens_with_its_results_and_their_images_load(browser, server):
    browser.get(server.url + "?q=a+red+thing")
    results = shown(browser)
    assert folders(results)[:3] == ["red"] * 3 and len(results) == 9 and all(r["width"] > 0 for r in results)
    assert all(0 < float(r["score"]) <= 1 for r in results[:3]) and results[0]["id"] == image_id(results[0]["path"])
    assert browser.find_element("id", "q").get_attribute("value") == "a red thing"
    assert browser.find_element("id", "heading").text == "Results for “a red thing”"
    assert "9 photos" in browser.find_element("id", "info").text
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert loaded and all(url.startswith(server.url) for url in loaded)  # nothing from anywhere else


def test_typing_a_query_updates_the_address_so_it_can_be_shared(browser, server):
    browser.get(server.url)
    box = browser.find_element("id", "q")
    box.send_keys("something green")
    browser.find_element("id", "go").click()
    assert folders(shown(browser))[:3] == ["green"] * 3
    assert browser.current_url == server.url + "?q=something+green"


def test_clicking_a_result_shows_more_like_it_and_back_returns(browser, server):
    browser.get(server.url + "?q=a+blue+thing")
    first = shown(browser)[0]
    assert first["path"].startswith("blue/")
    browser.find_element("css selector", f'#results .result[data-id="{first["id"]}"] img').click()
    wait_for(browser, lambda d: d.find_element("id", "heading").text == f"More like {first['path']}", "more like this")
    similar = shown(browser)
    assert folders(similar)[:2] == ["blue", "blue"] and first["id"] not in [r["id"] for r in similar]
    assert browser.current_url == f"{server.url}?similar={first['id']}"
    assert browser.find_element("id", "query-image").get_attribute("naturalWidth") != "0"
    browser.back()
    wait_for(browser, lambda d: d.find_element("id", "heading").text == "Results for “a blue thing”", "back to the query")
    assert shown(browser)[0]["id"] == first["id"]


def test_dropping_a_photo_on_the_page_searches_by_it(browser, server):
    browser.get(server.url)
    overlay_shown = browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        const fire = type => document.body.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true,
                                                                               dataTransfer: transfer}));
        fire("dragenter"); fire("dragover");
        const visible = !document.getElementById("drop-overlay").hidden;
        fire("drop");
        return visible && document.getElementById("drop-overlay").hidden;""", base64.b64encode(png_bytes("green", 40)).decode())
    assert overlay_shown
    wait_for(browser, lambda d: d.find_element("id", "heading").text == "More like dropped.png", "drop searched")
    assert folders(shown(browser))[:3] == ["green"] * 3


def test_choosing_a_photo_in_the_file_input_searches_by_it(browser, server, tmp_path):
    photo = tmp_path / "mine.png"
    photo.write_bytes(png_bytes("red", 41))
    browser.get(server.url)
    browser.find_element("id", "file").send_keys(str(photo))
    wait_for(browser, lambda d: d.find_element("id", "heading").text == "More like mine.png", "upload searched")
    assert folders(shown(browser))[:3] == ["red"] * 3


def test_the_page_shows_the_api_error(browser, server):
    browser.get(server.url + "?q=" + "x" * 1001)
    wait_for(browser, lambda d: d.find_element("id", "status").get_attribute("data-state") == "error", "error shown")
    assert "at most 1000 characters" in browser.find_element("id", "status").text
    assert browser.find_elements("css selector", "#results .result") == []
    browser.get(f"{server.url}?similar=0123456789abcdef")
    wait_for(browser, lambda d: "no indexed image has id 0123456789abcdef" in d.find_element("id", "status").text,
             "unknown id shown")
