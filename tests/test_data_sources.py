"""Caption sources: CSV/JSONL, COCO, TFDS (mocked, offline) and the shared source flags."""

import argparse
import json
import logging
import socket
import sys
import types

import pytest
import tensorflow_datasets as tfds

from dual_encoder.cli.sources import SourceArgumentError, add_source_arguments, parse_source_flags, records_from_args
from dual_encoder.data.coco import coco_records
from dual_encoder.data.collect import SourceFormatError
from dual_encoder.data.records import ImageRecord, SkipCounter
from dual_encoder.data.tabular import csv_records, jsonl_records
from dual_encoder.data.tfds_source import TfdsUnavailableError, tfds_records
from dual_encoder.testing import decode, encode, pattern, write_csv


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def make_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).write_bytes(encode(pattern(seed=i)))


# --- CSV / JSONL ---------------------------------------------------------------------------


def test_csv_merges_rows_per_image_and_counts_every_drop(tmp_path, monkeypatch, caplog):
    make_images(tmp_path / "sub" / "images", ["a.jpg", "b.jpg", "c.jpg"])
    write_csv(
        tmp_path / "sub" / "data.csv",
        [
            ("images/a.jpg", "a cat"),
            ("images/a.jpg", "a  cat "),  # the same caption once whitespace is cleaned
            ("images/b.jpg", "   "),
            ("images/a.jpg", "a small cat"),
            ("images/b.jpg", "a dog"),
            ("images/c.jpg", ""),  # c has no caption left
            ("images/d.jpg", "a missing bird"),
        ],
    )
    monkeypatch.chdir(tmp_path)  # relative CSV path: images resolve against its folder, not the cwd
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        records = csv_records("sub/data.csv", "image", "caption", skipped=skipped)
    assert [(r.image_id, r.captions, r.path) for r in records] == [
        ("images/a.jpg", ["a cat", "a small cat"], "sub/images/a.jpg"),
        ("images/b.jpg", ["a dog"], "sub/images/b.jpg"),
    ]
    assert skipped.as_dict() == {
        "duplicate_caption": 1,
        "empty_caption": 2,
        "missing_file": 1,
        "missing_file_captions": 1,
        "no_captions": 1,
    }
    # every drop is also named, with file and line
    assert "sub/data.csv: empty captions, skipped (2): sub/data.csv:4; sub/data.csv:7" in caplog.text
    assert "sub/data.csv: repeated captions of the same image, skipped (1): sub/data.csv:3" in caplog.text


def test_csv_unclosed_quote_is_named_not_silently_swallowed(tmp_path, caplog):
    make_images(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    path = tmp_path / "captions.csv"
    path.write_text('image,caption\na.jpg,a cat\nb.jpg,"an unclosed quote\nc.jpg,a dog\n', encoding="utf-8")
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        records = csv_records(str(path), "image", "caption", skipped=skipped)
    assert [(r.image_id, r.captions) for r in records] == [("a.jpg", ["a cat"])]
    assert skipped.as_dict() == {"malformed_row": 1}
    assert "line 3: a quoted field runs from line 3 to line 4 (an unclosed quote?)" in caplog.text


def test_csv_with_template_skips_malformed_rows_with_file_and_line(tmp_path, caplog):
    make_images(tmp_path / "images", ["1.jpg", "2.jpg", "3.jpg"])
    path = tmp_path / "styles.csv"
    path.write_text(
        "id,gender,productDisplayName\n"
        "1,Men,Blue Shirt\n"
        "2,Women,Red, Green Scarf\n"  # an unquoted comma: one field too many
        '3,Women,"Quoted, fine Dress"\n'
        "\n",
        encoding="utf-8",
    )
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        records = csv_records(str(path), "id", "productDisplayName", "images/{}.jpg", skipped=skipped)
    assert [(r.image_id, r.captions) for r in records] == [("1", ["Blue Shirt"]), ("3", ["Quoted, fine Dress"])]
    assert records[0].path == str(tmp_path / "images" / "1.jpg")
    assert skipped.as_dict() == {"malformed_row": 1}
    assert f"{path}: malformed rows skipped (1): line 3: 4 fields where the header has 3" in caplog.text


def test_non_utf8_csv_names_file_and_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("image,caption\na.jpg,fine\nb.jpg,caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(SourceFormatError, match=r"latin\.csv, line 3: not UTF-8"):
        csv_records(str(path), "image", "caption", skipped=SkipCounter())


def test_missing_column_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "x.csv", [("a.jpg", "a cat")], header=("file", "text"))
    with pytest.raises(SourceFormatError, match=r"x\.csv: no column 'caption'; the columns are: file, text"):
        csv_records(str(path), "file", "caption", skipped=SkipCounter())
    with pytest.raises(SourceFormatError, match="no image column given; the columns are: file, text"):
        csv_records(str(path), None, "text", skipped=SkipCounter())


def test_jsonl_accepts_caption_lists_and_skips_bad_lines(tmp_path, caplog):
    make_images(tmp_path / "images", ["7.jpg", "8.jpg"])
    lines = [
        {"id": 7, "caption": ["a red car", "a car"]},
        "this line is not JSON",
        ["not", "an", "object"],
        {"id": 8, "caption": "a tree"},
        {"id": 7, "caption": "a car"},
        {"caption": "no id here"},
        {"id": 8, "caption": 42},  # not text: named, not stored as "42"
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        records = jsonl_records(str(path), "id", "caption", "images/{}.jpg", skipped=skipped)
    assert [(r.image_id, r.captions) for r in records] == [("7", ["a red car", "a car"]), ("8", ["a tree"])]
    assert skipped.as_dict() == {"duplicate_caption": 1, "malformed_row": 4}
    assert "line 7: 'caption' is 42, not text or a list of texts" in caplog.text
    with pytest.raises(SourceFormatError, match="no column 'image'; the columns are: id, caption"):
        jsonl_records(str(path), "image", "caption", skipped=SkipCounter())


# --- COCO ----------------------------------------------------------------------------------


def make_coco(root, split, present, listed, prefix=""):
    """A COCO-layout folder: `listed` image ids in the JSON (2 captions each), `present` on disk."""
    names = {i: f"{prefix}{i:012d}.jpg" for i in listed}
    make_images(root / split, [names[i] for i in present])
    annotations = [{"id": 10 * i + k, "image_id": i, "caption": f"picture {i} caption {k}"} for i in listed for k in range(2)]
    annotations.append({"id": 999, "image_id": 12345, "caption": "names no listed image"})
    data = {"images": [{"id": i, "file_name": names[i]} for i in listed], "annotations": annotations}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(data))


@pytest.mark.parametrize("split, prefix", [("val2017", ""), ("train2014", "COCO_train2014_")])
def test_coco_counts_missing_images_and_their_captions(tmp_path, split, prefix):
    make_coco(tmp_path, split, present=[1, 3], listed=[1, 2, 3, 4, 5], prefix=prefix)
    skipped = SkipCounter()
    records = coco_records(str(tmp_path), split, skipped=skipped)
    assert [r.image_id for r in records] == ["1", "3"]
    assert records[0].captions == ["picture 1 caption 0", "picture 1 caption 1"]
    assert records[1].path == str(tmp_path / split / f"{prefix}000000000003.jpg")
    assert skipped.as_dict() == {"missing_file": 3, "missing_file_captions": 6, "orphan_caption": 1}


def test_coco_errors_name_the_missing_path(tmp_path):
    make_coco(tmp_path, "val2017", present=[1], listed=[1])
    with pytest.raises(FileNotFoundError, match="captions_train2017.json: no such COCO captions file"):
        coco_records(str(tmp_path), "train2017", skipped=SkipCounter())
    other = tmp_path / "elsewhere.json"
    other.write_text("{not json")
    with pytest.raises(SourceFormatError, match="elsewhere.json: not valid JSON"):
        coco_records(str(tmp_path), "val2017", str(other), skipped=SkipCounter())
    other.write_text(json.dumps({"images": []}))
    with pytest.raises(SourceFormatError, match="not a COCO captions file"):
        coco_records(str(tmp_path), "val2017", str(other), skipped=SkipCounter())


# --- TFDS ----------------------------------------------------------------------------------


def test_tfds_coco_captions_with_mock_data(no_network):
    skipped = SkipCounter()
    with tfds.testing.mock_data(num_examples=6):
        records = tfds_records("coco_captions", "val", skipped=skipped)
    assert records and len(records) + skipped["no_captions"] <= 6
    for record in records:
        assert record.source == "tfds:coco_captions" and record.path is None
        assert record.image_id.isdigit()  # image/id
        assert record.captions and all(isinstance(c, str) and c == c.strip() for c in record.captions)
        assert decode(record.image).ndim == 3


def test_tfds_offline_says_what_to_pass_instead(no_network, monkeypatch, tmp_path):
    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(TfdsUnavailableError, match="--coco-dir DIR --split val2017") as raised:
        tfds_records("coco_captions", "val", str(tmp_path), skipped=SkipCounter())
    assert "ConnectionError" in str(raised.value)
    with pytest.raises(ValueError, match="no TensorFlow Datasets dataset named 'no_such_set'"):
        tfds_records("no_such_set", "val", str(tmp_path), skipped=SkipCounter())


# --- shared source flags ---------------------------------------------------------------------


def test_records_from_args_for_each_file_source(tmp_path):
    make_coco(tmp_path / "coco", "val2017", present=[1, 2], listed=[1, 2, 3])
    records, info, skipped = records_from_args(parse_source_flags("--coco-dir", str(tmp_path / "coco"), "--split", "val2017"))
    assert len(records) == 2 and info["type"] == "coco" and info["split"] == "val2017"
    assert skipped["missing_file"] == 1

    make_images(tmp_path / "images", ["a.jpg"])
    csv_path = write_csv(tmp_path / "c.csv", [("a.jpg", "a cat")], header=("f", "t"))
    flags = ["--image-column", "f", "--caption-column", "t", "--image-template", "images/{}"]
    records, info, skipped = records_from_args(parse_source_flags("--csv", str(csv_path), *flags))
    assert [r.captions for r in records] == [["a cat"]] and info["type"] == "csv" and not skipped


def test_source_flags_are_checked(tmp_path):
    with pytest.raises(SourceArgumentError, match="--coco-dir needs --split"):
        records_from_args(parse_source_flags("--coco-dir", str(tmp_path)))
    with pytest.raises(SourceArgumentError, match="--tfds needs --split"):
        records_from_args(parse_source_flags("--tfds", "coco_captions"))
    with pytest.raises(SystemExit):  # argparse: two sources at once
        parse_source_flags("--sample", "--csv", "x.csv")
    with pytest.raises(SourceArgumentError, match="no caption source given"):
        parser = argparse.ArgumentParser()
        add_source_arguments(parser, required=False)
        records_from_args(parser.parse_args([]))


def test_every_source_flag_has_help():
    parser = argparse.ArgumentParser()
    add_source_arguments(parser)
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 11 and all(a.help and len(a.help) > 20 for a in flags)


def test_sample_source_is_imported_only_when_asked_for(monkeypatch):
    fake = types.ModuleType("dual_encoder.data.sample")
    fake.sample_records = lambda num_images: [
        ImageRecord(str(i), ["a shape"], "sample", image=pattern(seed=i)) for i in range(num_images)
    ]
    monkeypatch.setitem(sys.modules, "dual_encoder.data.sample", fake)
    records, info, _ = records_from_args(parse_source_flags("--sample", "--sample-images", "4"))
    assert len(records) == 4 and info == {"type": "sample", "num_images": 4}


# --- data that lies (issue 15) ---------------------------------------------------------------


def write_coco(root, images, annotations, split="val2017"):
    """A COCO-layout folder with the given `images` and `annotations` lists, as a file would hold them."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": annotations}))


def test_coco_file_names_never_leave_the_image_folder(tmp_path, caplog):
    root = tmp_path / "coco"
    make_images(root / "val2017", ["1.jpg"])
    make_images(root / "val2017" / "sub", ["2.jpg"])
    make_images(tmp_path, ["secret.jpg"])  # exists, outside DIR/val2017: must not be opened
    images = [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "sub/2.jpg"},
              {"id": 3, "file_name": "../../secret.jpg"}, {"id": 4, "file_name": str(tmp_path / "secret.jpg")},
              {"id": 5, "file_name": "sub/../../../../../../etc/hostname"}]
    annotations = [{"id": i, "image_id": i, "caption": f"caption of {i}"} for i in range(1, 6)]
    write_coco(root, images, annotations)
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        records = coco_records(str(root), "val2017", skipped=skipped)
    assert [r.path for r in records] == [str(root / "val2017" / "1.jpg"), str(root / "val2017" / "sub/2.jpg")]
    assert skipped.as_dict() == {"outside_image_dir": 3, "outside_image_dir_captions": 3}
    assert "file_name '../../secret.jpg' is outside" in caplog.text and "etc/hostname" in caplog.text


def test_coco_duplicate_image_ids_are_counted_not_silently_merged(tmp_path, caplog):
    root = tmp_path / "coco"
    make_images(root / "val2017", ["a.jpg", "b.jpg"])
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}, {"id": 1, "file_name": "a.jpg"}]
    write_coco(root, images, [{"id": 9, "image_id": 1, "caption": "a cat"}])
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        records = coco_records(str(root), "val2017", skipped=skipped)
    assert [(r.image_id, r.path) for r in records] == [("1", str(root / "val2017" / "a.jpg"))]
    assert skipped.as_dict() == {"duplicate_image_id": 1}  # the same file listed twice is no loss
    assert "id 1 is listed again with 'b.jpg'; kept 'a.jpg'" in caplog.text


def test_coco_captions_that_are_not_text_are_malformed_rows(tmp_path, caplog):
    root = tmp_path / "coco"
    make_images(root / "val2017", ["a.jpg"])
    captions = ["a cat", 7, ["a", "list"], None, {"text": "a dict"}, True, "\udc80 lone surrogate"]
    annotations = [{"id": n, "image_id": 1, "caption": c} for n, c in enumerate(captions)]
    annotations += [{"id": 50, "caption": "no image id"}, "not an object"]
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": True, "file_name": "b.jpg"}, {"id": 2, "file_name": 5},
              {"id": 3, "file_name": "\udcff.jpg"}]
    write_coco(root, images, annotations)
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        records = coco_records(str(root), "val2017", skipped=skipped)
    assert [(r.image_id, r.captions) for r in records] == [("1", ["a cat"])]  # never "7", "None" or "True"
    assert skipped.as_dict() == {"malformed_caption": 1, "malformed_row": 10}
    assert "annotations[1] (image 1): caption is 7, not text" in caplog.text
    assert "images[1] has no usable id or file_name" in caplog.text


def test_jsonl_columns_are_judged_by_the_rows_not_by_line_one(tmp_path, caplog):
    make_images(tmp_path / "images", ["1.jpg", "2.jpg", "3.jpg"])
    lines = [{"id": 1, "note": "no caption key on line 1"}, {"id": 2, "caption": "a dog"}, {"id": 3, "caption": "a cat"},
             {"id": ["a", "list"], "caption": "an image that is a list"}, {"id": True, "caption": "an image that is a bool"},
             {"id": 3, "caption": "\ud800 lone surrogate"}]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        records = jsonl_records(str(path), "id", "caption", "images/{}.jpg", skipped=skipped)
    assert [(r.image_id, r.captions) for r in records] == [("2", ["a dog"]), ("3", ["a cat"])]
    assert skipped.as_dict() == {"malformed_caption": 1, "malformed_row": 3}
    assert "line 1: no 'id' or 'caption' key" in caplog.text and "line 4: 'id' is [\"a\", \"list\"]" in caplog.text
    with pytest.raises(SourceFormatError, match="no column 'text'; the columns are: id, note, caption"):
        jsonl_records(str(path), "id", "text", skipped=SkipCounter())  # a key no row has is still the clear error


def test_csv_paths_from_outside_the_caption_folder_are_marked(tmp_path):
    make_images(tmp_path / "data" / "images", ["in.jpg"])
    make_images(tmp_path / "elsewhere", ["out.jpg", "abs.jpg"])
    rows = [("images/in.jpg", "inside"), ("images/../images/in.jpg", "inside too"),
            ("../elsewhere/out.jpg", "climbs out"), (str(tmp_path / "elsewhere" / "abs.jpg"), "absolute")]
    path = write_csv(tmp_path / "data" / "c.csv", rows)
    records = csv_records(str(path), "image", "caption", skipped=SkipCounter())
    assert {r.image_id: r.outside_source_folder for r in records} == {
        "images/in.jpg": False, "images/../images/in.jpg": False, "../elsewhere/out.jpg": True,
        str(tmp_path / "elsewhere" / "abs.jpg"): True,
    }
