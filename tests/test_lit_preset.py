"""The `lit` preset's command on real Flickr8k photos and the real towers in ../shared.

The issue's command, `python train.py --preset lit --csv ../shared/data/flickr8k/captions.txt
--image-column image --caption-column caption --image-template 'Images/{}' --output-dir
runs/lit-flickr8k`, run with the same flags from a folder laid out as ../shared/data/flickr8k is
(captions.txt beside Images/), whose captions.txt holds the first 150 photos only: the whole set
takes minutes to extract, which the benchmark (benchmarks/quality.py) spends instead.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dual_encoder import config as run_config

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
PHOTOS = 150

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not FLICKR.is_dir(), reason="../shared is absent"),
]


def test_the_lit_command_trains_on_flickr8k_with_flags_alone(tmp_path):
    data = tmp_path / "flickr8k"
    data.mkdir()
    os.symlink(FLICKR / "Images", data / "Images")
    with open(FLICKR / "captions.txt", newline="") as source, open(data / "captions.txt", "w", newline="") as out:
        reader = csv.DictReader(source)
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames)
        writer.writeheader()
        images = []
        for row in reader:
            if row["image"] not in images:
                images.append(row["image"])
            if len(images) > PHOTOS:
                break
            writer.writerow(row)
    command = [sys.executable, str(ROOT / "train.py"), "--preset", "lit", "--csv", "flickr8k/captions.txt",
               "--image-column", "image", "--caption-column", "caption", "--image-template", "Images/{}",
               "--output-dir", "runs/lit-flickr8k", "--quiet"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "lit-flickr8k" / "results.json").read_text())
    assert results["config"]["preset"] == "lit" and results["config"]["train"]["batch_size"] == 512
    assert results["config"]["model"]["feature_dropout"] == 0.3
    # Four stages below the top pooled beside it (80 + 112 + 192 + 320), and MiniLM's fifth layer beside its sixth.
    assert results["towers"]["image"]["feature_dim"] == 1280 + 704 and results["towers"]["image"]["pooled_dim"] == 1280
    assert results["towers"]["text"]["feature_dim"] == 2 * 384
    assert Path(results["towers"]["image"]["name"]).name == "efficientnet_lite0_keras"
    assert results["feature_cache"]["used"] and results["feature_cache"]["computed_rows"]["text"] == PHOTOS * 5
    val_photos = round(PHOTOS * run_config.get_preset("lit").data.val_fraction)  # lit holds out 5 %: 8 photos
    assert results["config"]["data"]["val_fraction"] == 0.05 and results["retrieval"]["num_images"] == val_photos
    assert results["data"]["duplicate_captions"]["captions"] == (PHOTOS - val_photos) * 5  # the training split
    chance = 1 / val_photos  # real towers find the held-out photos
    assert results["retrieval"]["text_to_image"]["R@1"] > 3 * chance and results["retrieval"]["image_to_text"]["R@1"] > 3 * chance
    assert (tmp_path / "runs" / "lit-flickr8k" / "saved_model" / "saved_model.pb").is_file()
    assert "text->image R@1/5/10" in done.stdout
