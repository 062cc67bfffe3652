#!/usr/bin/env python
"""The README's screenshot of the search page, with real results on real photos from ../shared.

  python docs/make_search_screenshot.py --shared ../shared --output docs/search_page.jpg

1. Without --model, trains `lit-small` (the two pretrained towers in ../shared/weights, locked;
   linear heads) on the Flickr8k captions in ../shared/data/flickr8k with train.py's own flags,
   into --work-dir (reused when it is already there).
2. Serves the photos of --images (default: ../shared/data/coco_mini, 239 COCO photos the model
   never trained on) with `python evaluate.py serve` on a free loopback port, its index and
   embedding cache inside --work-dir.
3. Opens `/?q=QUERY` in headless Chromium (Debian's chromium + chromium-driver, through
   Selenium; nothing is downloaded), waits until every result image has loaded, and saves the
   window (JPEG or PNG, by the suffix of --output).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shared", default=str(REPO.parent / "shared"), help="the shared data and weights folder")
    parser.add_argument("--model", help="a trained run folder to serve; default: train lit-small on Flickr8k first")
    parser.add_argument("--images", help="photo folder to serve (default: SHARED/data/coco_mini)")
    parser.add_argument("--query", default="a man riding a wave on a surfboard", help="the text searched for in the screenshot")
    parser.add_argument("--work-dir", default="runs/screenshot", help="the training run, index and cache go here")
    parser.add_argument("--output", default="docs/search_page.jpg", help="where the PNG goes")
    parser.add_argument("--window", default="1280,900", help="browser window size, WIDTH,HEIGHT")
    return parser


def train_lit_small(shared: Path, run: Path) -> Path:
    if (run / "saved_model" / "saved_model.pb").is_file():
        print(f"reusing {run}")
        return run
    flickr = shared / "data" / "flickr8k"
    command = [sys.executable, str(REPO / "train.py"), "--preset", "lit-small", "--csv", str(flickr / "captions.txt"),
               "--image-column", "image", "--caption-column", "caption", "--image-template", "Images/{}",
               "--output-dir", str(run), "--shards-dir", str(run.parent / "tfrecords-flickr8k")]
    print("training:", " ".join(command))
    subprocess.run(command, check=True, cwd=REPO)
    return run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server ended with exit code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def screenshot(url: str, output: Path, window: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={window}",
                 "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        WebDriverWait(driver, 120).until(lambda d: d.execute_script(
            "const imgs = [...document.querySelectorAll('#results .result img')];"
            "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"))
        time.sleep(0.5)  # let the layout settle after the last image
        output.parent.mkdir(parents=True, exist_ok=True)
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    from PIL import Image

    Image.open(io.BytesIO(png)).convert("RGB").save(output, quality=85, optimize=True)  # format from the suffix


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    shared, work = Path(args.shared), Path(args.work_dir)
    if not (shared / "data").is_dir():
        print(f"{shared}/data is absent: this script needs the shared photos and weights")
        return 1
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing: apt-get install chromium chromium-driver")
    model = Path(args.model) if args.model else train_lit_small(shared, work / "lit-small-flickr8k")
    images = Path(args.images) if args.images else shared / "data" / "coco_mini"
    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "evaluate.py"), "serve", "--model", str(model), "--images",
                               str(images), "--port", str(port), "--index", str(work / "index"),
                               "--cache-dir", str(work / "cache")], cwd=REPO)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/healthz", server)
        screenshot(f"{base}/?q={urllib.parse.quote(args.query)}", Path(args.output), args.window)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
