"""evaluate.py end to end on generated data with the informative colour model."""

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dual_encoder.cli import evaluate as cli
from dual_encoder.evaluation import embedders
from dual_encoder.testing import (
    COLOURS,
    build_tiny_clip_preset,
    colour_image,
    read_split,
    shared_colour_model,
    write_colour_folders,
)

ROOT = Path(__file__).resolve().parents[1]
CLASSIFICATION_KEYS = ("accuracy", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1",
                       "mean_per_class_recall", "per_class_recall", "class_names", "confusion_matrix")  # fmt: skip
RANK_KEYS = ("R@1", "R@5", "R@10", "mean_rank", "median_rank")




@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(shared_colour_model(tmp_path_factory))


@pytest.fixture(scope="module")
def colour_folders(tmp_path_factory):
    root = write_colour_folders(tmp_path_factory.mktemp("colours"), list(COLOURS), per_class=3, seed=1)
    (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    """COCO layout: 16 images with 3 captions each, plus one listed file that is missing."""
    root = tmp_path_factory.mktemp("coco")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    rng = np.random.default_rng(2)
    images, annotations = [], []
    for i, colour in enumerate(list(COLOURS) * 2 + ["red"]):
        name = f"{i:012d}.jpg"
        if i < 16:  # image 16 is listed but absent
            Image.fromarray(colour_image(colour, rng, (60, 80))).save(root / "val2017" / name)
        images.append({"id": i, "file_name": name})
        for j, text in enumerate(("a {} picture.", "something {} on grey", "the colour {}")):
            annotations.append({"image_id": i, "id": 10 * i + j, "caption": text.format(colour)})
    (root / "val2017" / f"{3:012d}.jpg").write_bytes(b"broken")  # listed, present, unreadable
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


def _run(args, tmp_path):
    return cli.main([*args, "--cache-dir", str(tmp_path / "cache"), "--quiet"])


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--dataset", "--data-dir", "--templates", "--baseline", "--shots", "--coco-dir",
                 "--shards", "--split", "--cache-dir", "--output-dir", "--image-size", "--resize"):  # fmt: skip
        assert flag in text
    with pytest.raises(SystemExit):
        cli.main(["search", "--help"])
    assert "--images" in capsys.readouterr().out


def test_zero_shot_end_to_end(model, colour_folders, tmp_path, capsys):
    out = tmp_path / "zs"
    args = ["--model", model, "--dataset", "folder", "--data-dir", str(colour_folders), "--output-dir", str(out),
            "--templates", "imagenet", "--baseline", "linear-probe", "--shots", "1", "all"]  # fmt: skip
    assert _run(args, tmp_path) == 0
    report = json.loads((out / "report.json").read_text())
    assert all(key in report for key in CLASSIFICATION_KEYS)
    assert report["accuracy"] >= 0.9 and report["num_examples"] == 24  # chance is 1/8
    assert report["skipped"] == {"undecodable": 1} and report["unreadable_images"][0].endswith("broken.jpg")
    assert report["prompts"]["num_templates"] == 80 and report["preprocessing"]["mode"] == "squash"
    assert report["model"]["type"] == "savedmodel" and report["data"]["type"] == "folder"
    assert set(report["linear_probe"]["results"]) == {"zero-shot", "1", "all"}
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert "accuracy" in capsys.readouterr().out


def test_zero_shot_on_a_tfds_set_with_mock_data(model, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "tfds"
    with tfds.testing.mock_data(num_examples=6):
        args = ["--model", model, "--dataset", "tfds:rock_paper_scissors", "--split", "test", "--output-dir", str(out)]
        assert _run(args, tmp_path) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["class_names"] == ["rock", "paper", "scissors"] and report["num_examples"] == 6
    assert report["data"]["type"] == "tfds" and report["data"]["split"] == "test"


def test_pretrained_clip_reference_from_a_local_preset(tmp_path):
    preset = build_tiny_clip_preset(tmp_path / "preset")
    data = write_colour_folders(tmp_path / "data", ["red", "blue"], per_class=2)
    out = tmp_path / "clip"
    assert _run(["--model", str(preset), "--dataset", "folder", "--data-dir", str(data), "--output-dir", str(out)], tmp_path) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["type"] == "keras_hub" and report["model"]["backbone"] == "CLIPBackbone"
    assert report["preprocessing"] == {**report["preprocessing"], "side": 32, "mode": "crop", "interpolation": "bicubic"}
    assert report["num_examples"] == 4


def test_retrieval_end_to_end_and_cache_reuse(model, coco_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "rt"
    args = ["--model", model, "--dataset", "coco", "--coco-dir", str(coco_dir), "--split", "val2017",
            "--output-dir", str(out)]  # fmt: skip
    assert _run(args, tmp_path) == 0
    printed = capsys.readouterr().out  # both kinds of skip are on the console, not only in report.json
    assert "1 unreadable skipped; skipped by the source: missing_file 1, missing_file_captions 3" in printed
    assert f"unreadable: {coco_dir / 'val2017' / f'{3:012d}.jpg'}" in printed
    report = json.loads((out / "report.json").read_text())
    for direction in ("text_to_image", "image_to_text"):
        assert all(key in report[direction] for key in RANK_KEYS)
    assert report["num_images"] == 15 and report["num_captions"] == 45
    assert report["text_to_image"]["R@1"] >= 0.3 and report["image_to_text"]["R@5"] >= 0.9  # chance 1/15, 1/3
    assert report["top1_pair_accuracy"] >= 0.3 and report["top100_pair_accuracy"] == 1.0
    assert report["skipped"] == {"undecodable": 1} and report["data"]["skipped_by_source"]["missing_file"] == 1
    assert (out / "similarity_matrix.png").exists() and list((tmp_path / "cache").glob("*.npz"))

    def no_model_calls(self, batch):
        raise AssertionError("the cache should have served every readable image")

    monkeypatch.setattr(embedders.SavedModelEmbedder, "_embed_image_batch", no_model_calls)
    monkeypatch.setattr(embedders, "load_rgb", _only_unreadable(embedders.load_rgb))
    assert _run([*args[:-1], str(tmp_path / "again")], tmp_path) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["text_to_image"] == report["text_to_image"]


def _only_unreadable(load_rgb):
    """Lets the broken file fail as before, refuses to decode anything else."""

    def wrapped(source, name="image"):
        if isinstance(source, str) and not source.endswith(f"{3:012d}.jpg"):
            raise AssertionError(f"{source} was decoded although cached")
        return load_rgb(source, name)

    return wrapped


def test_retrieval_from_jsonl_and_shards(model, tmp_path):
    from dual_encoder.data.records import ImageRecord, SkipCounter
    from dual_encoder.data.tfrecords import write_shards

    rng = np.random.default_rng(3)
    lines, records = [], []
    for i, colour in enumerate(list(COLOURS) * 2):
        path = tmp_path / f"{i}.png"
        pixels = colour_image(colour, rng)
        Image.fromarray(pixels).save(path)
        lines.append(json.dumps({"file": path.name, "text": [f"a {colour} thing", f"{colour} square"]}))
        records.append(ImageRecord(f"img{i}", [f"a {colour} thing"], "test", image=pixels))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines))
    jsonl = ["--jsonl", str(tmp_path / "pairs.jsonl"), "--image-column", "file", "--caption-column", "text"]
    assert _run(["--model", model, *jsonl, "--output-dir", str(tmp_path / "j")], tmp_path) == 0
    assert json.loads((tmp_path / "j" / "report.json").read_text())["num_captions"] == 32

    write_shards(records, str(tmp_path / "shards"), source_info={"type": "test"}, skipped=SkipCounter(),
                 val_fraction=0.5, progress=False)  # fmt: skip
    shards = ["--dataset", "tfrecords", "--shards", str(tmp_path / "shards"), "--split", "val"]
    assert _run(["--model", model, *shards, "--output-dir", str(tmp_path / "s")], tmp_path) == 0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["num_images"] == 8 and report["image_to_text"]["R@5"] >= 0.9


def test_zero_shot_from_a_csv_label_column_on_a_held_out_split(model, tmp_path):
    from dual_encoder.data.records import ImageRecord, SkipCounter
    from dual_encoder.data.tfrecords import write_shards

    rng = np.random.default_rng(5)
    (tmp_path / "images").mkdir()
    rows, records = ["id,colour,name"], []
    for i, colour in enumerate(["red"] * 6 + ["blue"] * 6 + ["green"] * 4 + ["black"] * 2):
        pixels = colour_image(colour, rng)
        Image.fromarray(pixels).save(tmp_path / "images" / f"{100 + i}.png")
        rows.append(f"{100 + i},{colour},item {i}")
        records.append(ImageRecord(str(100 + i), [f"item {i}"], "test", image=pixels))
    (tmp_path / "styles.csv").write_text("\n".join(rows) + "\n")
    write_shards(records, str(tmp_path / "shards"), source_info={"type": "test"}, skipped=SkipCounter(),
                 val_fraction=0.5, progress=False)  # fmt: skip
    colour_of = dict(row.split(",")[:2] for row in rows[1:])
    held_out = collections.Counter(colour_of[r["id"]] for r in read_split([tmp_path / "shards"], "val"))
    top3 = sorted(held_out, key=lambda c: (-held_out[c], c))[:3]
    out = tmp_path / "zs"
    args = ["--model", model, "--dataset", "csv", "--csv", str(tmp_path / "styles.csv"), "--image-column", "id",
            "--image-template", "images/{}.png", "--label-column", "colour", "--shards", str(tmp_path / "shards"),
            "--split", "val", "--top-classes", "3", "--output-dir", str(out)]  # fmt: skip
    assert _run(args, tmp_path) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["class_names"] == sorted(top3) and report["data"]["images_per_class"] == {c: held_out[c] for c in sorted(top3)}
    assert report["num_examples"] == sum(held_out[c] for c in top3) and sum(held_out.values()) < len(records)
    assert report["data"]["restricted_to"]["split"] == "val" and report["data"]["label_column"] == "colour"
    assert report["accuracy"] >= 0.9  # the colour model reads colours; chance is 1/3
    # without --dataset, --csv with --label-column is classification too; without it, retrieval needs a caption column
    assert _run(["--model", model, *args[4:-2], "--output-dir", str(tmp_path / "zs2")], tmp_path) == 0
    assert _run(["--model", model, "--label-column", "colour", "--dataset", "csv", "--output-dir", str(out)], tmp_path) == 2


def test_search_finds_matches_and_updates_the_index(model, colour_folders, tmp_path, capsys):
    folder = tmp_path / "photos"
    write_colour_folders(folder, ["red", "blue", "green"], per_class=3, seed=4)
    args = ["search", "a red car", "--model", model, "--images", str(folder), "--top-k", "3",
            "--output-dir", str(tmp_path / "out")]  # fmt: skip
    assert _run(args, tmp_path) == 0
    printed = capsys.readouterr().out.splitlines()
    assert all("/red/" in line for line in printed[:3]) and "9 images indexed" in printed[3]
    assert (tmp_path / "out" / "search_results.png").exists()
    results = json.loads((tmp_path / "out" / "search_results.json").read_text())
    assert len(results["matches"]) == 3 and results["matches"][0]["score"] >= results["matches"][2]["score"]
    Image.fromarray(colour_image("red", np.random.default_rng(9))).save(folder / "new_red.png")
    assert _run(args, tmp_path) == 0
    assert "10 images indexed" in capsys.readouterr().out


def test_search_skips_and_counts_a_file_name_that_is_not_utf8(model, tmp_path, capsys, caplog):
    import os

    folder = tmp_path / "photos"
    write_colour_folders(folder, ["red", "blue"], per_class=2, seed=5)
    broken = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    with open(broken, "wb") as handle:
        handle.write((folder / "red" / "0.png").read_bytes())
    args = ["search", "a red car", "--model", model, "--images", str(folder), "--top-k", "2",
            "--output-dir", str(tmp_path / "out")]  # fmt: skip
    assert _run(args, tmp_path) == 0
    results = json.loads((tmp_path / "out" / "search_results.json").read_text())
    assert results["indexed"] == 4 and results["skipped"].get("non_utf8_name") == 1
    assert caplog.text.count("caf\\udce9.png") == 1  # named (as Python shows the name), once, not once per listing


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "animals10", "--data-dir", "/no/such/dir"], "Expected layout"),
        (["--dataset", "folder", "--data-dir", "EMPTY_CLASS"], "contains no images"),
        (["--dataset", "imagenet"], "is not known"),
        ([], "say what to evaluate"),
        (["--dataset", "coco", "--split", "val2017"], "needs --coco-dir"),
        (["--dataset", "folder", "--data-dir", "TWO_CLASSES", "--shots", "4"], "add --baseline linear-probe"),
        (["--dataset", "folder", "--data-dir", "TWO_CLASSES", "--top-classes", "0"], "--top-classes must be an integer in [2, "),
    ],
)
def test_bad_input_gives_one_clear_error(args, message, model, tmp_path, capsys):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    (tmp_path / "cats" / "a.png").write_bytes(b"x")
    (tmp_path / "two" / "red").mkdir(parents=True)
    (tmp_path / "two" / "blue").mkdir()
    (tmp_path / "two" / "red" / "a.png").write_bytes(b"x")
    (tmp_path / "two" / "blue" / "b.png").write_bytes(b"x")
    args = [{"EMPTY_CLASS": str(tmp_path), "TWO_CLASSES": str(tmp_path / "two")}.get(a, a) for a in args]
    assert _run(["--model", model, *args], tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_real_process_shows_the_layout_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "--model", "any", "--dataset", "animals10",
         "--data-dir", str(tmp_path / "animals")],  # fmt: skip
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert f"error: no Animals-10 folder at {tmp_path / 'animals'}" in result.stderr
    assert "raw-img/" in result.stderr and "Traceback" not in result.stderr


def test_the_library_api_takes_notebook_arguments_and_refuses_wrong_ones(model, colour_folders):
    """What a notebook passes: one string, a template list, a PIL image, floats in [0, 1]."""
    from dual_encoder import evaluation
    from dual_encoder.evaluation import datasets

    embedder = embedders.load_embedder(model, progress=False)
    assert embedder.encode_texts("a red picture").shape[0] == 1  # one text, not one per character
    data = datasets.load_classification_dataset("folder", str(colour_folders))
    report = evaluation.zero_shot(embedder, data, ["a {} picture.", "something {}"], shots=["1", "all"])
    assert report["prompts"]["num_templates"] == 2 and report["accuracy"] >= 0.9
    with pytest.raises(TypeError, match="load_classification_dataset"):
        evaluation.zero_shot(embedder, str(colour_folders))
    with pytest.raises(ValueError, match="positive integers"):
        evaluation.zero_shot(embedder, data, shots=[0])
    pixels = colour_image("red", np.random.default_rng(0), (40, 40))
    as_uint8 = embedder.encode_images([pixels])
    np.testing.assert_allclose(embedder.encode_images([Image.fromarray(pixels)]), as_uint8, atol=1e-6)
    np.testing.assert_allclose(embedder.encode_images([pixels / 255.0]), as_uint8, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        embedder.encode_images([pixels.astype(np.float32)])
    index, _ = evaluation.folder_index(embedder, colour_folders, None)
    with pytest.raises(ValueError, match="at least 1"):
        evaluation.search(embedder, index, "red", top_k=0)


def test_search_and_retrieval_name_wrong_argument_types(model, colour_folders):
    """None, 42 or a string top_k used to end in AttributeError/TypeError from inside the embedder or numpy."""
    from dual_encoder import evaluation
    from dual_encoder.errors import InvalidArgumentError

    embedder = embedders.load_embedder(model, progress=False)
    index, _ = evaluation.folder_index(embedder, colour_folders, None)
    for query in (None, 42, ["red"]):
        with pytest.raises(TypeError, match="query must be a string") as refused:
            evaluation.search(embedder, index, query)
        assert isinstance(refused.value, InvalidArgumentError)  # the CLIs print it as one line
    with pytest.raises(TypeError, match="top_k must be an integer, got str '5'"):
        evaluation.search(embedder, index, "red", top_k="5")
    with pytest.raises(TypeError, match="index must be an EmbeddingIndex.*folder_index"):
        evaluation.search(embedder, str(colour_folders), "red")
    with pytest.raises(TypeError, match="embedder must have encode_texts.*load_embedder"):
        evaluation.search(model, index, "red")
    assert len(evaluation.search(embedder, index, "red", top_k=np.int64(2))) == 2
    for records in ("tfrecords/sample", [{"image": "a.jpg"}], None):
        with pytest.raises(TypeError, match="records must be a list of ImageRecord.*shard_records"):
            evaluation.retrieval_run(embedder, records, {"type": "sample"})
