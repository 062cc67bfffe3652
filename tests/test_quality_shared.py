"""benchmarks/quality.py, reduced, on the real photos and towers in ../shared (skipped when absent).

One seed, a few epochs, trained on coco_mini train2017 only (the fashion shards and their
features would take minutes to write and extract on 2 cores): the held-out numbers must still
be well above chance, or the towers, their preprocessing, the heads or the evaluation broke.
"""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

pytestmark = [
    pytest.mark.shared,
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is absent"),
]


def test_reduced_quality_run_beats_chance(quality, tmp_path, capsys):
    out = tmp_path / "quality.json"
    args = ["--shared", str(SHARED), "--out", str(out), "--seeds", "0", "--epochs", "3", "--no-floor", "--no-ablation",
            "--sources", "coco_train2017", "--shards-dir", str(tmp_path / "shards"), "--work-dir",
            str(tmp_path / "runs")]  # fmt: skip
    assert quality.main(args) == 0
    results = json.loads(out.read_text())
    written = out.read_text()  # paths relative to the repository or ../shared, nothing of this machine's
    assert str(ROOT) not in written and str(SHARED.resolve()) not in written and str(tmp_path) not in written
    trained, chance = results["summary"]["trained"], results["chance"]
    assert results["data"]["coco"]["num_images"] == 159 and results["data"]["coco"]["num_captions"] == 795
    assert chance["coco_t2i_R@5"] == pytest.approx(5 / 159)
    assert trained["coco_t2i_R@5"]["mean"] > 3 * chance["coco_t2i_R@5"]  # held-out photos, never trained on
    assert trained["animals_default_accuracy"]["mean"] > 2 * 0.1  # 10 classes
    assert trained["epochs_run"]["mean"] <= 3 and trained["extraction_seconds"]["mean"] > 0
    assert results["prompts"]["animals_default"]["templates"] == ["a photo of a {}."]
    assert results["preprocessing"]["mode"] == "crop"  # EfficientNet-Lite0's converter crops
    assert "| coco val2017 text→image R@5 |" in capsys.readouterr().out


def test_without_shared_it_says_so_and_succeeds(quality, tmp_path, capsys):
    assert quality.main(["--shared", str(tmp_path / "nothing"), "--out", str(tmp_path / "q.json")]) == 0
    assert "skipped" in capsys.readouterr().out and not (tmp_path / "q.json").exists()
