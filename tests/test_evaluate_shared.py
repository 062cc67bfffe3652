"""evaluate.py on the real sample photos in ../shared/data (skipped when ../shared is absent).

The colour model knows nothing about animals or COCO scenes, so these runs check the plumbing
on real files (Italian folders, real JPEG sizes, the official COCO caption file with images
missing), not the numbers.
"""

import json
from pathlib import Path

import pytest

from dual_encoder.testing import shared_colour_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not (ROOT.parent / "shared").is_dir(), reason="../shared is absent"),
]


@pytest.fixture(scope="module")
def cli():
    from dual_encoder.cli import evaluate

    return evaluate


def _report(cli, args, tmp_path) -> dict:
    out = tmp_path / "out"
    assert cli.main([*args, "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    return json.loads((out / "report.json").read_text())


def test_zero_shot_on_animals10_proxy(cli, tmp_path_factory, tmp_path):
    model = str(shared_colour_model(tmp_path_factory))
    args = ["--model", model, "--dataset", "animals10", "--data-dir", str(DATA / "animals10_proxy"),
            "--templates", "auto", "--baseline", "linear-probe", "--shots", "1", "all"]  # fmt: skip
    report = _report(cli, args, tmp_path)
    assert report["class_names"] == ["dog", "horse", "elephant", "butterfly", "chicken", "cat", "cow", "sheep",
                                     "spider", "squirrel"]  # fmt: skip
    assert report["num_examples"] == 33 and report["num_skipped_images"] == 0
    assert sum(map(sum, report["confusion_matrix"])) == 33 and len(report["confusion_matrix"]) == 10
    assert report["data"]["images_per_class"]["spider"] == 6 and report["data"]["missing_classes"] == []
    assert report["prompts"]["example"] == "a photo of a dog, a type of animal."
    assert 0.0 <= report["macro_f1"] <= 1.0 and set(report["per_class_recall"]) == set(report["class_names"])
    assert (tmp_path / "out" / "confusion_matrix.png").exists()


def test_retrieval_on_coco_mini_with_missing_images(cli, tmp_path_factory, tmp_path):
    model = str(shared_colour_model(tmp_path_factory))
    coco = DATA / "coco_mini"
    args = ["--model", model, "--dataset", "coco", "--coco-dir", str(coco), "--split", "val2017",
            "--captions-json", str(coco / "annotations" / "official" / "captions_val2017.json")]  # fmt: skip
    report = _report(cli, args, tmp_path)
    assert report["num_images"] == 159 and report["num_captions"] >= 159 * 5
    assert report["data"]["skipped_by_source"]["missing_file"] == 5000 - 159
    for direction in ("text_to_image", "image_to_text"):
        assert set(report[direction]) == {"R@1", "R@5", "R@10", "mean_rank", "median_rank"}
        assert 1 <= report[direction]["median_rank"] <= report["num_captions"]
    assert 0 <= report["top1_pair_accuracy"] <= report["top100_pair_accuracy"] <= 1
    assert (tmp_path / "out" / "similarity_matrix.png").exists()
