"""Issue 15's battery of bad inputs against the shard writer: each is a counted, named skip or one
clear error line, never a hang, a traceback, wrong pixels, a read outside the user's folders, an
empty folder passed off as data, or two writers racing in one folder."""

import json
import logging
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dual_encoder.cli.data import main
from dual_encoder.data import folder_lock as lock_module
from dual_encoder.data.folder_lock import LOCK_NAME, FolderLockedError, folder_lock
from dual_encoder.data.records import ImageRecord, SkipCounter
from dual_encoder.data.tfrecords import NoShardsError, NothingWrittenError, list_shards, split_by_image, write_shards
from dual_encoder.testing import REPO, close, decode, encode, pattern, read_split, write_csv

CSV_FLAGS = ["--image-column", "image", "--caption-column", "caption"]
RAMP = np.linspace(0, 1, 32 * 48, dtype=np.float32).reshape(32, 48)


def write(records, out, **kwargs):
    kwargs = {"source_info": {"type": "test"}, "skipped": SkipCounter(), "progress": False, "val_fraction": 0, **kwargs}
    return write_shards(records, str(out), **kwargs)


def path_records(folder, names):
    return [ImageRecord(name, [f"caption of {name}"], "test", path=str(folder / name)) for name in names]


@pytest.fixture
def fifo(tmp_path):
    """A FIFO named like an image; its write end is closed after a few seconds, so a writer that
    wrongly opens it reads an empty file instead of hanging the test run."""
    path = tmp_path / "images" / "fifo.jpg"
    path.parent.mkdir(exist_ok=True)
    os.mkfifo(path)
    open_ends = [os.open(path, os.O_RDWR | os.O_NONBLOCK)]
    closer = threading.Timer(3, lambda: os.close(open_ends.pop()))
    closer.start()
    yield path
    closer.cancel()
    closer.join()
    for end in open_ends:
        os.close(end)


# --- images the writer cannot open, or cannot convert faithfully ------------------------------


def test_entries_that_are_not_images_are_counted_skips_and_deep_images_are_scaled(tmp_path, fifo, caplog):
    folder = fifo.parent
    for i in range(2):
        (folder / f"good{i}.jpg").write_bytes(encode(pattern(seed=i)))
    (folder / "dir.jpg").mkdir()
    (folder / "loop1.jpg").symlink_to("loop2.jpg")
    (folder / "loop2.jpg").symlink_to("loop1.jpg")
    Image.fromarray(RAMP).save(folder / "float.tif")
    Image.fromarray(np.rint(RAMP * 65535).astype(np.uint16)).save(folder / "deep.tif")
    Image.fromarray(np.rint(RAMP * 1000).astype(np.int32)).save(folder / "int32.tif")
    names = ["good0.jpg", "good1.jpg", "dir.jpg", "loop1.jpg", "fifo.jpg", "float.tif", "deep.tif", "int32.tif"]
    with caplog.at_level(logging.WARNING):
        manifest = write(path_records(folder, names), tmp_path / "out")
    assert manifest["skipped"] == {"not_a_file": 2, "not_a_file_captions": 2, "unreadable": 1, "unreadable_captions": 1,
                                   "unsupported_image": 1, "unsupported_image_captions": 1}
    examples = {e["id"]: e for e in read_split(str(tmp_path / "out"), "train")}
    assert sorted(examples) == ["deep.tif", "float.tif", "good0.jpg", "good1.jpg"]
    ramp = np.repeat(np.rint(RAMP * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    for name in ("float.tif", "deep.tif"):  # not the near-black image a [0, 1] float used to become
        assert close(decode(examples[name]["jpeg"]), ramp, tolerance=2), name
    for name, problem in [("dir.jpg", "a directory"), ("fifo.jpg", "a FIFO"), ("loop1.jpg", "symbolic links"),
                          ("int32.tif", "no known white level")]:
        assert f"{folder / name}: " in caplog.text and problem in caplog.text


# --- paths from the data stay inside the user's folders ----------------------------------------


def test_coco_entries_outside_the_image_folder_are_never_read(tmp_path, capsys):
    coco = tmp_path / "coco"
    (coco / "val2017").mkdir(parents=True)
    (coco / "val2017" / "1.jpg").write_bytes(encode(pattern()))
    (tmp_path / "private.jpg").write_bytes(encode(pattern(seed=3)))
    (coco / "annotations").mkdir()
    images = [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "../../../../etc/hostname"},
              {"id": 3, "file_name": str(tmp_path / "private.jpg")}, {"id": 4, "file_name": "../../private.jpg"}]
    annotations = [{"id": i, "image_id": i, "caption": f"picture {i}"} for i in range(1, 5)]
    (coco / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    out = tmp_path / "out"
    assert main(["--coco-dir", str(coco), "--split", "val2017", "--out", str(out), "--val-fraction", "0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images_written"] == 1 and [e["id"] for e in read_split(str(out), "train")] == ["1"]
    assert manifest["skipped"] == {"outside_image_dir": 3, "outside_image_dir_captions": 3}
    assert "outside_image_dir 3" in capsys.readouterr().out


def test_csv_images_from_outside_its_folder_are_counted_in_summary_and_manifest(tmp_path, capsys):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "data" / "images" / "a.jpg").write_bytes(encode(pattern()))
    (tmp_path / "shared" / "b.jpg").write_bytes(encode(pattern(seed=1)))
    (tmp_path / "shared" / "c.jpg").write_bytes(encode(pattern(seed=2)))
    rows = [("images/a.jpg", "inside"), ("../shared/b.jpg", "climbs out"), (str(tmp_path / "shared" / "c.jpg"), "absolute")]
    csv_path = write_csv(tmp_path / "data" / "c.csv", rows)
    out = tmp_path / "out"
    assert main(["--csv", str(csv_path), *CSV_FLAGS, "--out", str(out), "--val-fraction", "0"]) == 0
    summary = capsys.readouterr().out
    assert "wrote 3 images / 3 captions in 1 shard" in summary
    assert "(train 3); 2 of them from outside the caption file's folder (absolute or ../ paths); skipped: nothing" in summary
    assert json.loads((out / "manifest.json").read_text())["images_outside_source_folder"] == 2


# --- writing nothing is a failure --------------------------------------------------------------


def test_a_write_that_ends_with_no_image_fails_in_one_line_and_leaves_no_folder(tmp_path, capsys):
    """The template climbs out to files that exist but are not images: every one is skipped."""
    (tmp_path / "outside").mkdir()
    for name in ("hostname", "passwd"):
        (tmp_path / "outside" / name).write_text("not an image\n")
    csv_path = write_csv(tmp_path / "a" / "b" / "c.csv", [("hostname", "x"), ("passwd", "y")])
    out = tmp_path / "out"
    args = ["--csv", str(csv_path), *CSV_FLAGS, "--image-template", "../../outside/{}", "--quiet"]
    assert main([*args, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: no image could be written to {out}: every one was skipped (undecodable 2, undecodable_captions 2); "
        "see the warnings above"
    ]
    assert not out.exists()
    mine = tmp_path / "mine"  # a folder the user made keeps what it held, and nothing of ours
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main([*args, "--out", str(mine)]) == 2
    assert sorted(os.listdir(mine)) == ["notes.txt"]


def test_no_usable_record_names_what_was_skipped(tmp_path):
    skipped = SkipCounter(missing_file=3, missing_file_captions=4)
    with pytest.raises(NothingWrittenError, match=r"no images to write: .*\(skipped: missing_file 3, missing_file_captions 4"):
        write([], tmp_path / "out", skipped=skipped)
    assert not (tmp_path / "out").exists()


def test_list_shards_refuses_a_split_the_manifest_says_is_empty(tmp_path):
    (tmp_path / "images").mkdir()
    records = [ImageRecord(f"{i}.jpg", [f"caption {i}"], "test", path=str(tmp_path / "images" / f"{i}.jpg"))
               for i in range(4)]
    val_ids = {r.image_id for r in split_by_image(records, 0.5, seed=0)["val"]}
    for record in records:  # every val image unreadable, every train image fine
        (tmp_path / "images" / record.image_id).write_bytes(b"" if record.image_id in val_ids else encode(pattern()))
    out = tmp_path / "out"
    manifest = write(records, out, val_fraction=0.5)
    assert manifest["splits"]["val"]["images"] == 0 and len(list_shards(str(out), "train")) == 1
    with pytest.raises(NoShardsError, match=rf"{out}: manifest.json says split 'val' holds 0 images \(skipped when written: "
                                            r"undecodable 2"):
        list_shards(str(out), "val")


# --- one writer per folder ---------------------------------------------------------------------


def test_a_second_writer_is_refused_at_once_naming_folder_and_lock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    records = [ImageRecord("a", ["a caption"], "test", image=pattern())]
    with folder_lock(str(out)):
        with pytest.raises(FolderLockedError) as refused:
            write(records, out)
        message = str(refused.value)
        assert str(out) in message and str(out / LOCK_NAME) in message and f"pid {os.getpid()}" in message
        assert "plan.json" not in os.listdir(out)  # refused before touching anything
    assert write(records, out)["images_written"] == 1  # once the first is done
    assert LOCK_NAME not in os.listdir(out)


HOLDS_THE_FOLDER = """
import os, time
import tensorflow as tf
class WaitsForTheTest(tf.io.TFRecordWriter):
    def write(self, record):
        open(os.environ["LOCKED_FLAG"], "w").close()
        while not os.path.exists(os.environ["GO_FLAG"]):
            time.sleep(0.05)
        super().write(record)
tf.io.TFRecordWriter = WaitsForTheTest
"""


def test_two_writer_processes_on_one_folder_one_refuses_the_other_finishes(tmp_path, capsys):
    """The race of issue 15: the second writer used to delete the first one's temporary shard."""
    names = [f"{i}.jpg" for i in range(4)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(encode(pattern(seed=i)))
    csv_path = write_csv(tmp_path / "c.csv", [(n, f"caption of {n}") for n in names])
    out = tmp_path / "out"
    args = ["--csv", str(csv_path), *CSV_FLAGS, "--out", str(out), "--images-per-shard", "2", "--quiet"]
    flags = {"LOCKED_FLAG": str(tmp_path / "locked"), "GO_FLAG": str(tmp_path / "go")}
    program = (f"import runpy, sys\n{HOLDS_THE_FOLDER}\nsys.argv = ['python -m dual_encoder.data', *{args!r}]\n"
               "runpy.run_module('dual_encoder.data', run_name='__main__', alter_sys=True)\n")
    first = subprocess.Popen([sys.executable, "-c", program], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", **flags), text=True)
    try:
        for _ in range(1200):  # the first writer is inside its first shard
            if os.path.exists(flags["LOCKED_FLAG"]) or first.poll() is not None:
                break
            threading.Event().wait(0.05)
        assert os.path.exists(flags["LOCKED_FLAG"]), first.communicate()[1][-2000:]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{out} is being written by another writer (pid {first.pid} on " in err and LOCK_NAME in err
    finally:
        open(flags["GO_FLAG"], "w").close()
        _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err[-2000:]
    assert sorted(e["id"] for e in read_split(str(out), "train") + read_split(str(out), "val")) == names


def test_remote_lock_takes_over_a_dead_writer_and_refuses_a_live_one(tmp_path, caplog):
    """gs:// has no flock: the lock file is the lock, and a stale one on this host is detected by pid."""
    folder = f"ram://{tmp_path.name}/out"
    tf.io.gfile.makedirs(folder)
    lock = f"{folder}/{LOCK_NAME}"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holders = {"dead here": {"pid": int(ended.stdout), "host": lock_module.socket.gethostname(), "started": "then"},
               "alive here": {"pid": os.getppid(), "host": lock_module.socket.gethostname(), "started": "now"},
               "elsewhere": {"pid": 1, "host": "another-machine", "started": "now"}}
    for what, holder in holders.items():
        if what == "elsewhere":
            tf.io.gfile.remove(lock)  # ram:// does not truncate a file opened for writing
        with tf.io.gfile.GFile(lock, "w") as f:
            f.write(json.dumps(holder))
        if what == "dead here":
            with caplog.at_level(logging.WARNING), folder_lock(folder):
                assert json.loads(tf.io.gfile.GFile(lock).read())["pid"] == os.getpid()
            assert "no longer runs" in caplog.text and not tf.io.gfile.exists(lock)
        else:
            with pytest.raises(FolderLockedError, match=f"pid {holder['pid']} on {holder['host']}.*delete {lock}"):
                with folder_lock(folder):
                    pass
            assert json.loads(tf.io.gfile.GFile(lock).read()) == holder  # refusing leaves the holder's lock alone
