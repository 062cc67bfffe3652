"""benchmarks/quality.py --suite flickr8k, its parts on a captions file the test writes (offline, no towers)."""

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest


def _flickr8k(folder: Path, photos: int) -> dict:
    (folder / "Images").mkdir(parents=True)
    with open(folder / "captions.txt", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for i in range(photos):
            (folder / "Images" / f"{i}.jpg").write_bytes(b"")
            writer.writerows([f"{i}.jpg", f"photo {i}, caption {c}, with a comma"] for c in range(5))
    return {"captions": folder / "captions.txt", "images": folder / "Images"}


def test_the_held_out_split_is_by_photo_seeded_and_keeps_every_caption(quality, tmp_path):
    paths = _flickr8k(tmp_path / "flickr8k", 30)
    first = quality.flickr8k_split(paths, tmp_path / "a", held_out=10)
    again = quality.flickr8k_split(paths, tmp_path / "b", held_out=10)
    read = {name: list(csv.DictReader(open(path, encoding="utf-8"))) for name, path in first.items()}
    held, rest = ({r["image"] for r in read[n]} for n in ("held_out", "trainval"))
    assert len(held) == 10 and len(rest) == 20 and not held & rest  # photos, not captions, are split
    assert len(read["held_out"]) == 50 and len(read["trainval"]) == 100  # every caption, commas and all
    assert all(Path(image).is_absolute() and Path(image).exists() for image in held | rest)
    assert first["held_out"].read_text() == again["held_out"].read_text()  # the seed fixes the split


def test_chance_and_the_table(quality):
    records = [SimpleNamespace(captions=["a"] * 5) for _ in range(1000)]
    chance = quality.flickr8k_chance(records)
    assert chance["t2i_R@1"] == pytest.approx(0.001) and chance["t2i_R@10"] == pytest.approx(0.01)
    assert chance["i2t_R@1"] == pytest.approx(0.001, rel=1e-3)  # 5 right captions of 5,000, one guess
    assert chance["t2i_median_rank"] == 500.5
    stat = {"mean": 0.2, "std": 0.01, "values": [0.19, 0.2, 0.21]}
    summary = {"lit": {"t2i_R@1": stat, "extraction_seconds": {"mean": 150.0, "std": 0.0, "values": [150.0]}},
               "untrained": {"t2i_R@1": {"mean": 0.05, "std": 0.0, "values": [0.05]}}}
    table = quality.flickr8k_table(summary, chance)
    assert "| text→image R@1 | 20.0 ± 1.0 | 5.0 | 11.8 | 0.1 |" in table  # one seed: no spread shown
    assert "`lit` (3 seeds) | untrained heads (class prior alone) (1 seed) |" in table
    assert "BRNN (2015)" in table and "feature extraction, once (s) | 150.0 | – |" in table
