"""The Karpathy split source (dataset_coco.json / dataset_flickr*.json) on small files the tests write."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from dual_encoder.cli import data as data_cli
from dual_encoder.cli import evaluate
from dual_encoder.cli import train as train_cli
from dual_encoder.cli.sources import SourceArgumentError, parse_source_flags, records_from_args, source_given
from dual_encoder.data.collect import SourceFormatError
from dual_encoder.data.karpathy import karpathy_records, parse_splits
from dual_encoder.data.records import SkipCounter
from dual_encoder.errors import InvalidArgumentError, PathNotFoundError
from dual_encoder.testing import COLOURS, colour_image, read_split, shared_colour_model

CAPTIONS = ("a {} picture.", "something {} on grey", "the colour {}")


def sentences(colour):
    return [{"tokens": text.format(colour).split(), "raw": text.format(colour), "imgid": 0} for text in CAPTIONS]


def save_jpeg(path, colour, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(colour_image(colour, rng, (48, 64))).save(path, quality=95)


@pytest.fixture
def coco_karpathy(tmp_path):
    """dataset_coco.json: 8 test images in val2014/ (one listed but absent), 2 val, 2 restval, 2 train in train2014/."""
    rng = np.random.default_rng(0)
    root, entries = tmp_path / "coco", []
    colours = list(COLOURS)
    plan = [("test", "val2014", c) for c in colours] + [("val", "val2014", "red"), ("val", "val2014", "blue"),
            ("restval", "val2014", "green"), ("restval", "val2014", "cyan"),
            ("train", "train2014", "white"), ("train", "train2014", "black")]  # fmt: skip
    for i, (split, folder, colour) in enumerate(plan):
        name = f"COCO_{folder}_{i:012d}.jpg"
        if i != 7:  # the last test image is listed but missing
            save_jpeg(root / folder / name, colour, rng)
        entries.append({"filepath": folder, "filename": name, "split": split, "imgid": i, "cocoid": 1000 + i,
                        "sentids": [3 * i, 3 * i + 1, 3 * i + 2], "sentences": sentences(colour)})  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path, root


@pytest.fixture
def flickr_karpathy(tmp_path):
    """dataset_flickr8k.json: images straight in the root folder, no filepath."""
    rng = np.random.default_rng(1)
    root, entries = tmp_path / "Images", []
    for i, colour in enumerate(list(COLOURS) * 2):
        name = f"{1000 + i}_{colour}.jpg"
        save_jpeg(root / name, colour, rng)
        entries.append({"filename": name, "split": "test" if i < 12 else "train", "imgid": i, "sentences": sentences(colour)})
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"images": entries, "dataset": "flickr8k"}))
    return path, root


def write_file(tmp_path, value, name="dataset_x.json"):
    path = tmp_path / name
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    (tmp_path / "imgs").mkdir(exist_ok=True)
    return str(path), str(tmp_path / "imgs")


def test_coco_layout_reads_filepath_and_only_the_split_asked_for(coco_karpathy, caplog):
    path, root = coco_karpathy
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        records = karpathy_records(str(path), str(root), "test", skipped=skipped)
    assert [r.image_id for r in records][:2] == ["val2014/COCO_val2014_000000000000.jpg",
                                                 "val2014/COCO_val2014_000000000001.jpg"]  # fmt: skip
    assert len(records) == 7 and records[0].path == str(root / "val2014" / "COCO_val2014_000000000000.jpg")
    assert records[0].captions == ["a red picture.", "something red on grey", "the colour red"]
    assert records[0].source == "karpathy"
    assert skipped.as_dict() == {"missing_file": 1, "missing_file_captions": 3}  # the other splits are not skips
    assert "images missing on disk, skipped (1)" in caplog.text and "COCO_val2014_000000000007.jpg" in caplog.text

    training = karpathy_records(str(path), str(root), "train,restval", skipped=SkipCounter())
    assert sorted(r.image_id.split("/")[0] for r in training) == ["train2014", "train2014", "val2014", "val2014"]


def test_flickr_layout_reads_images_from_the_root_with_the_csv_ids(flickr_karpathy):
    path, root = flickr_karpathy
    records, info, skipped = records_from_args(
        parse_source_flags("--karpathy-json", str(path), "--image-root", str(root), "--split", "test"))
    assert len(records) == 12 and records[0].image_id == "1000_red.jpg" and records[0].path == str(root / "1000_red.jpg")
    assert info == {"type": "karpathy", "path": str(path), "image_root": str(root), "split": "test"}
    assert not skipped
    assert source_given(parse_source_flags("--karpathy-json", str(path)))  # what train.py / evaluate.py can ask


def test_entries_that_lie_are_counted_and_named(tmp_path, caplog):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "imgs" / "sub" / "a.jpg").write_bytes(b"x")  # the writer, not the source, decodes images
    (tmp_path / "secret.jpg").write_bytes(b"x")
    entries = [
        {"filepath": "sub", "filename": "a.jpg", "split": "test",
         "sentences": [{"raw": "a cat"}, {"raw": "a  cat "}, {"tokens": ["no", "raw"]}, "bare text", {"raw": 7}]},
        {"filepath": "..", "filename": "secret.jpg", "split": "test", "sentences": [{"raw": "x"}, {"raw": "y"}]},
        {"filename": "/etc/passwd", "split": "test", "sentences": [{"raw": "z"}]},
        {"split": "test", "sentences": [{"raw": "no file name"}]},
        {"filename": "b.jpg", "sentences": [{"raw": "no split"}]},
        "not an object",
    ]  # fmt: skip
    path, root = write_file(tmp_path, {"images": entries})
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        records = karpathy_records(path, root, "test", skipped=skipped)
    assert [(r.image_id, r.captions) for r in records] == [("sub/a.jpg", ["a cat"])]
    assert skipped.as_dict() == {"duplicate_caption": 1, "malformed_caption": 3, "malformed_row": 3,
                                 "outside_image_dir": 2, "outside_image_dir_captions": 3}  # fmt: skip
    assert "'../secret.jpg' is outside" in caplog.text and "images[3] has no 'filename'" in caplog.text
    assert "images[4] has no 'split'" in caplog.text


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ({"images": "many"}, "not a Karpathy split file"),
    ({"images": [], "annotations": []}, "a COCO captions file goes to --coco-dir"),
    ({"images": [{"filename": "a.jpg", "split": "train", "sentences": []}]},
     r"no image in split 'test' \(splits in the file: train 1\)"),
    ({"images": [{"file_name": "a.jpg", "split": "test"}]}, "none of the 1 images of split 'test' is usable"),
    ({"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"caption": "a cat"}]}]},
     "no sentence of split 'test' has a 'raw' caption"),
])  # fmt: skip
def test_a_wrong_file_is_one_error_naming_it(tmp_path, content, message):
    path, root = write_file(tmp_path, content)
    with pytest.raises(SourceFormatError, match=message) as raised:
        karpathy_records(path, root, "test", skipped=SkipCounter())
    assert str(raised.value).startswith(path)


def test_split_and_folders_are_checked_before_reading(tmp_path, coco_karpathy):
    path, root = coco_karpathy
    with pytest.raises(InvalidArgumentError, match="--split 'val2017' is not a Karpathy split: choose test, val, train, restval"):
        records_from_args(parse_source_flags("--karpathy-json", str(path), "--image-root", str(root), "--split", "val2017"))
    assert parse_splits("train, restval,train") == ("train", "restval")
    with pytest.raises(SourceArgumentError, match="--karpathy-json needs --split"):
        records_from_args(parse_source_flags("--karpathy-json", str(path), "--image-root", str(root)))
    with pytest.raises(SourceArgumentError, match="--karpathy-json needs --image-root"):
        records_from_args(parse_source_flags("--karpathy-json", str(path), "--split", "test"))
    with pytest.raises(PathNotFoundError, match="no such image folder"):
        karpathy_records(str(path), str(tmp_path / "nowhere"), "test", skipped=SkipCounter())
    with pytest.raises(PathNotFoundError, match="no such Karpathy split file"):
        karpathy_records(str(tmp_path / "none.json"), str(root), "test", skipped=SkipCounter())


def test_data_cli_writes_shards_from_a_split(coco_karpathy, tmp_path, capsys):
    path, root = coco_karpathy
    out = tmp_path / "shards"
    argv = ["--karpathy-json", str(path), "--image-root", str(root), "--split", "test", "--val-fraction", "0",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert data_cli.main(argv) == 0
    written = read_split([str(out)], "train")
    assert sorted(e["id"] for e in written)[0] == "val2014/COCO_val2014_000000000000.jpg" and len(written) == 7
    assert all(e["source"] == "karpathy" and len(e["captions"]) == 3 for e in written)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["type"] == "karpathy" and manifest["source"]["split"] == "test"
    assert manifest["skipped"]["missing_file"] == 1

    assert data_cli.main([*argv[:5], "val2017", *argv[6:]]) == 2
    assert "is not a Karpathy split" in capsys.readouterr().err


def test_evaluate_retrieval_on_a_split(flickr_karpathy, tmp_path_factory, tmp_path, capsys):
    path, root = flickr_karpathy
    model = str(shared_colour_model(tmp_path_factory))
    out = tmp_path / "rt"
    argv = ["--model", model, "--karpathy-json", str(path), "--image-root", str(root), "--split", "test",
            "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"]  # fmt: skip
    assert evaluate.main(argv) == 0
    assert "retrieval (karpathy): 12 images, 36 captions" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["type"] == "karpathy" and report["data"]["split"] == "test"
    assert report["image_to_text"]["R@5"] >= 0.9 and report["text_to_image"]["R@5"] > 0.6  # chance 5/12
    assert evaluate.main(["--dataset", "karpathy", *argv]) == 0


@pytest.mark.parametrize("show_help", [
    lambda: data_cli.build_parser().parse_args(["--help"]),
    lambda: train_cli.parse_args(["--help"]),
    lambda: evaluate.main(["--help"]),
])  # fmt: skip
def test_every_tool_lists_the_flags(show_help, capsys):
    with pytest.raises(SystemExit) as done:
        show_help()
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--karpathy-json FILE" in text and "--image-root DIR" in text and "dataset_flickr30k.json" in text
    assert "test, val, train, restval" in text


def test_train_py_takes_a_karpathy_split_as_its_data(tmp_path, capsys):
    from dual_encoder.cli import train

    missing = tmp_path / "dataset_flickr8k.json"
    argv = ["--karpathy-json", str(missing), "--image-root", str(tmp_path), "--split", "train",
            "--output-dir", str(tmp_path / "run")]
    assert train.main(argv) == 2  # it reads the split file (absent here), rather than training on the sample
    out, err = capsys.readouterr()
    assert "No data given" not in out and str(missing) in err
