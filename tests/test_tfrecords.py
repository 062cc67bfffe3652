"""The shard writer: round trip, split by image, every bad input counted, resume after kill -9, the CLI."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dual_encoder import config as run_config
from dual_encoder.cli import flags
from dual_encoder.cli.data import main
from dual_encoder.cli.sources import parse_source_flags, records_from_args
from dual_encoder.data.records import ImageRecord, SkipCounter
from dual_encoder.data.tfrecords import (
    ConfigMismatchError,
    NoShardsError,
    list_shards,
    read_manifest,
    split_by_image,
    write_shards,
)
from dual_encoder.testing import close, decode, encode, pattern, read_split, rotated_jpeg, run_cli, write_csv

CSV_FLAGS = ["--image-column", "image", "--caption-column", "caption"]


def memory_records(n, captions_per_image=2):
    return [
        ImageRecord(f"img{i:03d}", [f"caption {k} of image {i}" for k in range(captions_per_image)], "test",
                    image=pattern(32, 40, seed=i))
        for i in range(n)
    ]


def write(records, out, **kwargs):
    kwargs = {"source_info": {"type": "test"}, "skipped": SkipCounter(), "progress": False, **kwargs}
    return write_shards(records, str(out), **kwargs)


def files(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# --- round trip and split ------------------------------------------------------------------


def test_round_trip_gives_back_captions_and_pixels(tmp_path):
    records = memory_records(10)
    manifest = write(records, tmp_path / "out", images_per_shard=3, val_fraction=0.2)
    assert manifest["images_written"] == 10 and manifest["captions_written"] == 20
    assert manifest["splits"]["train"]["shards"] == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert manifest["splits"]["val"] == {"images": 2, "captions": 4, "shards": ["val-00000-of-00001.tfrecord"]}
    assert manifest["shards"] == 4 and manifest["split"] == {"by": "image", "val_fraction": 0.2, "seed": 0}
    assert read_manifest(str(tmp_path / "out")) == manifest
    by_id = {r.image_id: r for r in records}
    examples = read_split(str(tmp_path / "out"), "train") + read_split(str(tmp_path / "out"), "val")
    assert sorted(e["id"] for e in examples) == sorted(by_id)
    for example in examples:
        record = by_id[example["id"]]
        assert example["captions"] == record.captions and example["source"] == "test"
        assert (example["height"], example["width"]) == (32, 40)
        assert close(decode(example["jpeg"]), record.image)


def test_split_is_by_image_exact_seeded_and_deterministic():
    records = memory_records(50, captions_per_image=1)
    split = split_by_image(records, 0.2, seed=0)
    train, val = ({r.image_id for r in split[s]} for s in ("train", "val"))
    assert len(val) == 10 and len(train) == 40 and not train & val
    assert split_by_image(list(reversed(records)), 0.2, seed=0) == split  # input order does not matter
    assert {r.image_id for r in split_by_image(records, 0.2, seed=1)["val"]} != val
    assert split_by_image(records, 0.0, seed=0)["val"] == []


def test_val_fraction_zero_writes_only_train(tmp_path):
    manifest = write(memory_records(3), tmp_path, val_fraction=0)
    assert list(manifest["splits"]) == ["train"] and len(list_shards(str(tmp_path), "train")) == 1
    with pytest.raises(NoShardsError, match="no 'val' shards"):
        list_shards(str(tmp_path), "val")


def test_list_shards_reads_several_folders_and_explains_what_is_wrong(tmp_path):
    write(memory_records(4), tmp_path / "a", val_fraction=0.25)
    write(memory_records(3), tmp_path / "b", val_fraction=0)
    assert [Path(p).parent.name for p in list_shards([str(tmp_path / "a"), str(tmp_path / "b")], "train")] == ["a", "b"]
    with pytest.raises(NoShardsError, match="no such folder"):
        list_shards(str(tmp_path / "nope"), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoShardsError, match="no manifest.json"):
        list_shards([str(tmp_path / "a"), str(tmp_path / "empty")], "train")
    os.remove(tmp_path / "a" / "manifest.json")
    with pytest.raises(NoShardsError, match="interrupted"):
        read_manifest(str(tmp_path / "a"))


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no images to write"):
        write([], tmp_path)
    with pytest.raises(ValueError, match="'img000' appears in several records"):
        write(memory_records(2) + memory_records(1), tmp_path)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        write(memory_records(2), tmp_path, val_fraction=1.0)
    with pytest.raises(ValueError, match="leaves no training image"):
        write(memory_records(1), tmp_path, val_fraction=0.6)


def test_any_tf_io_gfile_file_system_works(tmp_path):
    """ram:// stands in for gs:// and hdfs://: no step may use local-only file calls."""
    root = f"ram://{tmp_path.name}"
    tf.io.gfile.makedirs(f"{root}/src/images")
    for i in range(3):
        with tf.io.gfile.GFile(f"{root}/src/images/{i}.jpg", "wb") as f:
            f.write(encode(pattern(seed=i)))
    with tf.io.gfile.GFile(f"{root}/src/c.csv", "w") as f:
        f.write("id,text\n" + "".join(f"{i},caption {i}\n" for i in range(4)))
    args = parse_source_flags("--csv", f"{root}/src/c.csv", "--image-column", "id", "--caption-column", "text",
                           "--image-template", "images/{}.jpg")
    records, source_info, skipped = records_from_args(args)
    manifest = write(records, f"{root}/out", source_info=source_info, skipped=skipped, val_fraction=0)
    assert manifest["images_written"] == 3 and manifest["skipped"]["missing_file"] == 1
    assert manifest["source"]["path"] == f"{root}/src/c.csv"
    assert sorted(e["id"] for e in read_split(f"{root}/out", "train")) == ["0", "1", "2"]


# --- every bad input, counted --------------------------------------------------------------


@pytest.fixture
def messy_csv(tmp_path):
    """A CSV over real files covering every bad case; returns (csv path, {name: file bytes})."""
    folder = tmp_path / "messy"
    folder.mkdir()
    data = {f"good{i}.jpg": encode(pattern(seed=i), quality=90) for i in range(4)}
    data.update({
        "truncated.jpg": encode(pattern(seed=9), quality=90)[:300],
        "empty.jpg": b"",
        "notimage.jpg": b"<html>not found</html>\n",
        "photo.png": encode(pattern(seed=5), "PNG"),
        "gray.jpg": encode(Image.fromarray(pattern(seed=6)).convert("L")),
        "cmyk.jpg": encode(Image.fromarray(pattern(seed=7)).convert("CMYK")),
        "rotated.jpg": rotated_jpeg(),
        "nocap.jpg": encode(pattern(seed=8)),
    })
    for name, content in data.items():
        (folder / name).write_bytes(content)
    rows = [(name, f"a picture called {name}") for name in data if name != "nocap.jpg"]
    rows += [
        ("good0.jpg", "   "),  # whitespace caption
        ("nocap.jpg", ""),  # its only caption is empty
        ("missing.jpg", "this file does not exist"),
        ("good1.jpg", "a second caption"),  # duplicate id: merged
        ("good1.jpg", "a picture called good1.jpg"),  # exact duplicate caption
    ]
    return write_csv(folder / "captions.csv", rows), data


def test_every_bad_input_is_counted_in_the_manifest(messy_csv, tmp_path):
    csv_path, data = messy_csv
    args = parse_source_flags("--csv", str(csv_path), *CSV_FLAGS)
    records, source_info, skipped = records_from_args(args)
    manifest = write(records, tmp_path / "out", source_info=source_info, skipped=skipped, val_fraction=0)
    assert manifest["skipped"] == {
        "duplicate_caption": 1,
        "empty_caption": 2,
        "missing_file": 1,
        "missing_file_captions": 1,
        "no_captions": 1,
        "undecodable": 3,
        "undecodable_captions": 3,
    }
    examples = {e["id"]: e for e in read_split(str(tmp_path / "out"), "train")}
    assert sorted(examples) == sorted(["cmyk.jpg", "gray.jpg", "photo.png", "rotated.jpg"] + [f"good{i}.jpg" for i in range(4)])
    assert manifest["images_written"] == 8 and manifest["captions_written"] == 9
    assert examples["good1.jpg"]["captions"] == ["a picture called good1.jpg", "a second caption"]
    assert examples["good2.jpg"]["jpeg"] == data["good2.jpg"]  # fast path: the file's own bytes
    for name in ("cmyk.jpg", "gray.jpg", "photo.png"):
        assert decode(examples[name]["jpeg"]).shape == (48, 64, 3)
    rotated = examples["rotated.jpg"]
    assert (rotated["height"], rotated["width"]) == (64, 32)
    pixels = decode(rotated["jpeg"])
    assert close(pixels[:28], np.full((28, 32, 3), (255, 0, 0), np.uint8))  # upright: red on top


def test_max_side_is_applied_and_recorded(tmp_path):
    manifest = write(memory_records(2), tmp_path, max_side=20, val_fraction=0)
    assert manifest["max_side"] == 20
    assert {(e["height"], e["width"]) for e in read_split(str(tmp_path), "train")} == {(16, 20)}


# --- resuming ------------------------------------------------------------------------------


def test_rerun_keeps_committed_shards_and_repairs_the_rest(tmp_path):
    records = memory_records(9)
    first = write(records, tmp_path, images_per_shard=3, val_fraction=0)
    mtimes = {name: (tmp_path / name).stat().st_mtime_ns for name in files(tmp_path)}
    # A crash between the rename and the sidecar, plus a stale temporary file and a torn shard.
    os.remove(tmp_path / "train-00001-of-00003.stats.json")
    (tmp_path / "train-00001-of-00003.tfrecord").write_bytes(b"torn")
    (tmp_path / "train-00002-of-00003.tfrecord.tmp-0123abcd").write_bytes(b"partial")
    second = write(records, tmp_path, images_per_shard=3, val_fraction=0)
    assert {k: v for k, v in second.items() if k != "finished"} == {k: v for k, v in first.items() if k != "finished"}
    assert (tmp_path / "train-00000-of-00003.tfrecord").stat().st_mtime_ns == mtimes["train-00000-of-00003.tfrecord"]
    assert not any(".tmp-" in name for name in files(tmp_path))
    ids = [e["id"] for e in read_split(str(tmp_path), "train")]
    assert sorted(ids) == sorted(r.image_id for r in records)


def test_rerun_on_a_complete_folder_leaves_its_manifest_untouched(tmp_path, monkeypatch):
    """train.py keys its resume check on the manifest's digest: reusing complete shards must not change it."""
    from dual_encoder.data import tfrecords

    write(memory_records(3), tmp_path, val_fraction=0)
    before = (tmp_path / "manifest.json").read_bytes()
    monkeypatch.setattr(tfrecords, "_now", lambda: "2999-01-01T00:00:00+00:00")  # the rerun finishes later
    assert write(memory_records(3), tmp_path, val_fraction=0) == json.loads(before)
    assert (tmp_path / "manifest.json").read_bytes() == before


def test_another_configuration_is_refused_unless_overwrite(tmp_path):
    records = memory_records(4)
    write(records, tmp_path, images_per_shard=2)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigMismatchError, match="seed: 0 then, 1 now"):
        write(records, tmp_path, images_per_shard=2, seed=1)
    records[0].captions.append("a new caption")
    with pytest.raises(ConfigMismatchError, match="other images or captions"):
        write(records, tmp_path, images_per_shard=2)
    manifest = write(records, tmp_path, images_per_shard=4, seed=1, overwrite=True)
    assert manifest["captions_written"] == 9 and manifest["shards"] == 2
    assert "notes.txt" in files(tmp_path) and "train-00000-of-00002.tfrecord" not in files(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "train-00000-of-00001.tfrecord").write_bytes(b"")
    with pytest.raises(ConfigMismatchError, match="holds shards without plan.json"):
        write(records, tmp_path / "other")


KILL_ON_SIXTH_WRITE = """
import os, signal
import tensorflow as tf
class DiesMidShard(tf.io.TFRecordWriter):
    writes = 0
    def write(self, record):
        DiesMidShard.writes += 1
        if DiesMidShard.writes == 6:
            os.kill(os.getpid(), signal.SIGKILL)
        super().write(record)
tf.io.TFRecordWriter = DiesMidShard
"""


def test_cli_killed_mid_shard_resumes_without_duplicates(tmp_path, capsys):
    names = [f"{i:02d}.jpg" for i in range(12)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(encode(pattern(32, 32, seed=i)))
    csv_path = write_csv(tmp_path / "c.csv", [(n, f"caption of {n}") for n in names] + [("gone.jpg", "x")])
    out = tmp_path / "out"
    args = ["--csv", str(csv_path), *CSV_FLAGS, "--out", str(out), "--images-per-shard", "2", "--val-fraction", "0.25"]

    killed = run_cli(*args, code=KILL_ON_SIXTH_WRITE)
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = files(out)
    assert "manifest.json" not in left
    assert [n for n in left if n.endswith(".stats.json")] == ["train-00000-of-00005.stats.json",
                                                              "train-00001-of-00005.stats.json"]
    assert any(".tmp-" in n for n in left)  # the shard being written when killed
    assert ".writer.lock" in left  # its lock file stays behind, but a lock dies with its writer
    committed = (out / "train-00000-of-00005.tfrecord").stat().st_mtime_ns

    assert main(args) == 0  # the rerun, in this process to save a TensorFlow start-up
    summary = capsys.readouterr().out
    assert "wrote 12 images / 12 captions in 7 shards" in summary
    assert "(train 9, val 3); skipped: missing_file 1, missing_file_captions 1" in summary
    assert "2 of 7 shards were already complete" in summary
    assert (out / "train-00000-of-00005.tfrecord").stat().st_mtime_ns == committed
    assert not any(".tmp-" in n for n in files(out)) and ".writer.lock" not in files(out)
    manifest = read_manifest(str(out))
    assert (manifest["images_written"], manifest["captions_written"]) == (12, 12)
    assert manifest["skipped"] == {"missing_file": 1, "missing_file_captions": 1}
    train, val = (read_split(str(out), s) for s in ("train", "val"))
    ids = [e["id"] for e in train + val]
    assert sorted(ids) == names and not {e["id"] for e in train} & {e["id"] for e in val}


# --- the CLI -------------------------------------------------------------------------------


def test_cli_bad_input_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "latin.csv"
    path.write_bytes("image,caption\na.jpg,caf\xe9\n".encode("latin-1"))
    assert main(["--csv", str(path), *CSV_FLAGS, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}, line 2: not UTF-8 text (byte 0xe9 at column 10); re-save the file as UTF-8, e.g. iconv -f "
                   f"latin1 -t utf-8"]
    assert main(["--coco-dir", str(tmp_path), "--split", "val2017", "--out", str(tmp_path / "o")]) == 2
    assert "captions_val2017.json: no such COCO captions file" in capsys.readouterr().err


def test_cli_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--coco-dir", "--split", "--captions-json", "--csv", "--jsonl", "--image-column", "--caption-column",
                 "--image-template", "--tfds", "--sample", "--out", "--val-fraction", "--images-per-shard",
                 "--max-side", "--seed", "--overwrite"):
        assert flag in text
    assert "Interrupted? Rerun the same command" in text


def test_cli_writes_a_csv_source_in_process(messy_csv, tmp_path, capsys):
    csv_path, _ = messy_csv
    assert main(["--csv", str(csv_path), *CSV_FLAGS, "--out", str(tmp_path / "o"), "--val-fraction", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "wrote 8 images / 9 captions in 2 shards" in out and "undecodable 3" in out
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["source"]["path"] == str(csv_path)


def test_train_py_reuses_shards_the_data_cli_wrote_with_its_defaults(messy_csv, tmp_path, capsys):
    """Both tools default to the same split (same seed and fraction), so `train.py` with a source
    flag reuses what `python -m dual_encoder.data` wrote instead of refusing the folder."""
    from dual_encoder.cli import train as train_script

    csv_path, _ = messy_csv
    out = tmp_path / "o"
    assert main(["--csv", str(csv_path), *CSV_FLAGS, "--out", str(out)]) == 0
    before = (out / "manifest.json").read_text()
    args = train_script.parse_args(["--csv", str(csv_path), *CSV_FLAGS, "--shards-dir", str(out), "--quiet"])
    config = flags.apply_overrides(run_config.get_preset("reference"), args)
    assert train_script.prepare_shards(args, config) == [str(out)]
    assert (out / "manifest.json").read_text() == before
