"""The writer on the real sample data in ../shared (skips when it is absent), driven by flags alone."""

import time
from pathlib import Path

import pytest

from dual_encoder.cli.data import build_parser
from dual_encoder.cli.sources import records_from_args
from dual_encoder.data.tfrecords import write_shards
from dual_encoder.testing import read_split

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent"),
]


def run(flags, out):
    args = build_parser().parse_args([*flags, "--out", str(out), "--quiet"])
    start = time.perf_counter()
    records, source_info, skipped = records_from_args(args)
    manifest = write_shards(records, args.out, source_info=source_info, skipped=skipped, progress=False)
    print(f"{flags[0]}: {manifest['images_written']} images / {manifest['captions_written']} captions, "
          f"skipped {manifest['skipped']}, {time.perf_counter() - start:.1f} s")
    return manifest


def test_coco_mini_with_the_official_val_json(tmp_path):
    coco = SHARED / "coco_mini"
    flags = ["--coco-dir", str(coco), "--split", "val2017",
             "--captions-json", str(coco / "annotations" / "official" / "captions_val2017.json")]
    manifest = run(flags, tmp_path)
    assert (manifest["images_written"], manifest["captions_written"]) == (159, 795)
    assert manifest["skipped"]["missing_file"] == 4841
    # 25,014 captions in the file = written + lost with missing images + repeats dropped
    assert 795 + manifest["skipped"]["missing_file_captions"] + manifest["skipped"].get("duplicate_caption", 0) == 25014
    assert (manifest["splits"]["train"]["images"], manifest["splits"]["val"]["images"]) == (127, 32)
    assert len(read_split(str(tmp_path), "val")) == 32


def test_fashion_styles_csv_with_flags_alone(tmp_path):
    flags = ["--csv", str(SHARED / "fashion_small" / "styles.csv"), "--image-column", "id",
             "--image-template", "images/{}.jpg", "--caption-column", "productDisplayName"]
    manifest = run(flags, tmp_path)
    assert (manifest["images_written"], manifest["captions_written"]) == (1327, 1327)
    assert manifest["skipped"] == {}
