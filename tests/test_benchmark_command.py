"""`python evaluate.py benchmark` end to end on a data root the tests write, with the informative colour model."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dual_encoder.cli import data as data_cli
from dual_encoder.cli import evaluate
from dual_encoder.evaluation import benchmark
from dual_encoder.testing import COLOURS, SHARED, colour_image, shared_colour_model

FASHION_COLOURS = ("red", "green", "blue", "yellow", "cyan", "magenta")  # articleType labels the colour model can read
RETRIEVAL_KEYS = {f"{side}_retrieval_recall@{k}" for side in ("image", "text") for k in (1, 5, 10)}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(shared_colour_model(tmp_path_factory))


def save(path, colour, rng, size=(48, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(colour_image(colour, rng, size)).save(path)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """coco_mini (16 val2017 photos, 3 captions each), animals10_proxy (2 classes), fashion_small (24 products,
    articleType = a colour) with its shards, half held out; no flickr8k."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(4)
    images, annotations = [], []
    for i, colour in enumerate(list(COLOURS) * 2):
        save(root / "coco_mini" / "val2017" / f"{i:012d}.jpg", colour, rng)
        images.append({"id": i, "file_name": f"{i:012d}.jpg"})
        annotations += [{"image_id": i, "id": 10 * i + j, "caption": text.format(colour)}
                        for j, text in enumerate(("a {} picture.", "something {} on grey", "the colour {}"))]  # fmt: skip
    (root / "coco_mini" / "annotations").mkdir()
    (root / "coco_mini" / "annotations" / "captions_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations}))
    for folder, colour in (("cane", "black"), ("gatto", "white")):
        for i in range(3):
            save(root / "animals10_proxy" / "raw-img" / folder / f"{i}.jpeg", colour, rng)
    rows = ["id,articleType,productDisplayName"]
    for i, colour in enumerate(FASHION_COLOURS * 4):
        save(root / "fashion_small" / "images" / f"{1000 + i}.jpg", colour, rng)
        rows.append(f"{1000 + i},{colour},Product {i}")
    (root / "fashion_small" / "styles.csv").write_text("\n".join(rows) + "\n")
    shards = root.parent / f"{root.name}-fashion-shards"
    assert data_cli.main(["--csv", str(root / "fashion_small" / "styles.csv"), "--image-column", "id", "--image-template",
                          "images/{}.jpg", "--caption-column", "productDisplayName", "--val-fraction", "0.5",
                          "--out", str(shards), "--quiet"]) == 0  # fmt: skip
    return root, shards


def run(root, out, *flags):
    return evaluate.main(["benchmark", "--data-root", str(root), "--output-dir", str(out),
                          "--cache-dir", str(out.parent / "cache"), "--quiet", *flags])  # fmt: skip


def test_every_set_found_is_run_reported_and_written_in_clip_benchmark_layout(model, data_root, tmp_path, capsys):
    root, fashion_shards = data_root
    out = tmp_path / "bench"
    assert run(root, out, "--model", model, "--fashion-shards", str(fashion_shards),
               "--flickr8k-shards", str(tmp_path / "no-flickr8k")) == 0  # fmt: skip
    printed = capsys.readouterr().out
    print(printed)  # the table, for the log of a run with -s
    assert f"skipped flickr8k_heldout: no shards at {tmp_path / 'no-flickr8k'}; write them with: python -m dual_encoder.data" \
        in printed  # fmt: skip
    table = printed[printed.index("set "):].splitlines()
    assert table[0].split() == ["set", "task", "images", "seconds", "main", "metrics"]
    assert [line.split()[:3] for line in table[1:4]] == [["coco_mini_val2017", "zeroshot_retrieval", "16"],
                                                         ["animals10_proxy", "zeroshot_classification", "6"],
                                                         ["fashion_small_articletype", "zeroshot_classification", "12"]]

    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["dataset"], r["task"]) for r in lines] == [("coco_mini_val2017", "zeroshot_retrieval"),
                                                          ("animals10_proxy", "zeroshot_classification"),
                                                          ("fashion_small_articletype", "zeroshot_classification")]
    assert all(set(r) == {"dataset", "model", "pretrained", "task", "metrics", "language"} for r in lines)
    assert lines[0]["model"] == Path(model).name and lines[0]["pretrained"] == model
    coco, animals, fashion = (r["metrics"] for r in lines)
    assert set(coco) == RETRIEVAL_KEYS
    assert coco["image_retrieval_recall@5"] >= 0.6 and coco["text_retrieval_recall@5"] >= 0.9  # chance 5/16
    assert set(animals) == set(fashion) == {"acc1", "acc5", "mean_per_class_recall"}
    assert animals["acc5"] is None  # 2 classes: top-5 says nothing (CLIP_benchmark writes NaN)
    assert fashion["acc1"] >= 0.8 and fashion["mean_per_class_recall"] >= 0.8  # chance 1/6

    for name in ("coco_mini_val2017", "animals10_proxy", "fashion_small_articletype"):
        report = json.loads((out / name / "report.json").read_text())
        assert report["benchmark_set"] == name and report["command"][:2] == ["evaluate.py", "benchmark"]
    fashion_report = json.loads((out / "fashion_small_articletype" / "report.json").read_text())
    assert fashion_report["data"]["restricted_to"]["split"] == "val" and fashion_report["num_examples"] == 12
    animals_report = json.loads((out / "animals10_proxy" / "report.json").read_text())
    assert animals_report["prompts"]["template_set"] == "animals"  # --templates auto: the set's own prompts

    single = tmp_path / "single"  # the same numbers as a single evaluate.py run: the same library calls
    assert evaluate.main(["--model", model, "--coco-dir", str(root / "coco_mini"), "--split", "val2017", "--output-dir",
                          str(single), "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0  # fmt: skip
    alone = json.loads((single / "report.json").read_text())
    together = json.loads((out / "coco_mini_val2017" / "report.json").read_text())
    assert alone["text_to_image"] == together["text_to_image"] and alone["image_to_text"] == together["image_to_text"]


def test_flickr8k_held_out_split_from_shards(model, tmp_path):
    rng = np.random.default_rng(6)
    (tmp_path / "root" / "flickr8k" / "Images").mkdir(parents=True)
    rows = ["image,caption"]
    for i, colour in enumerate(list(COLOURS) * 2):
        save(tmp_path / "root" / "flickr8k" / "Images" / f"{i}.jpg", colour, rng)
        rows += [f"{i}.jpg,a {colour} dog", f"{i}.jpg,something {colour}"]
    (tmp_path / "root" / "flickr8k" / "captions.txt").write_text("\n".join(rows) + "\n")
    shards = tmp_path / "flickr8k-shards"
    assert data_cli.main(["--csv", str(tmp_path / "root" / "flickr8k" / "captions.txt"), "--image-column", "image",
                          "--caption-column", "caption", "--image-template", "Images/{}", "--val-fraction", "0.5",
                          "--out", str(shards), "--quiet"]) == 0  # fmt: skip
    out = tmp_path / "bench"
    assert run(tmp_path / "root", out, "--model", model, "--flickr8k-shards", str(shards), "--sets", "flickr8k_heldout") == 0
    (line,) = [json.loads(text) for text in (out / "results.jsonl").read_text().splitlines()]
    assert line["dataset"] == "flickr8k_heldout" and line["metrics"]["text_retrieval_recall@5"] >= 0.9
    report = json.loads((out / "flickr8k_heldout" / "report.json").read_text())
    assert report["data"]["split"] == "val" and report["num_images"] == 8


def test_a_root_without_any_set_is_one_error_naming_it(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    flags = ["--model", str(tmp_path / "no-model"), "--flickr8k-shards", str(tmp_path / "none")]
    assert run(tmp_path / "empty", tmp_path / "out", *flags) == 2  # before any model loads: the model is not there
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: no benchmark set found under {tmp_path / 'empty'}: coco_mini_val2017: no ")
    assert "\n" not in error and "animals10_proxy: no" in error and "fashion_small_articletype: no" in error
    assert run(tmp_path / "missing", tmp_path / "out", *flags) == 2
    assert f"--data-root {tmp_path / 'missing'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        evaluate.main(["benchmark", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--model", "--data-root", "--flickr8k-shards", "--fashion-shards", "--sets", "--templates",
                 "--output-dir", "--cache-dir", "--no-cache", "--batch-size", "--skip-damaged-shards"):  # fmt: skip
        assert flag in text
    assert "outputs/benchmark-<model name>" in text and "CLIP_benchmark" in text


def test_the_clip_benchmark_names_map_our_directions():
    """CLIP_benchmark's image_retrieval is text->image (find the image), text_retrieval is image->text."""
    report = {"num_images": 4, "text_to_image": {"R@1": 0.1, "R@5": 0.5, "R@10": 1.0},
              "image_to_text": {"R@1": 0.2, "R@5": 0.6, "R@10": 0.9}}  # fmt: skip
    record = benchmark.clip_benchmark_record(benchmark.SetResult("s", benchmark.RETRIEVAL, report, 1.0), "runs/x/saved_model")
    assert record["model"] == "x" and record["pretrained"] == "runs/x/saved_model"
    assert record["metrics"]["image_retrieval_recall@1"] == 0.1 and record["metrics"]["text_retrieval_recall@10"] == 0.9


@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is absent")
def test_on_the_shared_data_root(model, tmp_path, capsys):
    out = tmp_path / "bench"
    flags = ["--model", model, "--sets", "coco_mini_val2017", "animals10_proxy"]
    assert run(SHARED / "data", out, *flags) == 0
    table = capsys.readouterr().out
    assert "coco_mini_val2017" in table and "animals10_proxy" in table
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["dataset"] for r in lines] == ["coco_mini_val2017", "animals10_proxy"]
    assert json.loads((out / "coco_mini_val2017" / "report.json").read_text())["num_images"] == 159  # the _all159 file
    assert json.loads((out / "animals10_proxy" / "report.json").read_text())["num_examples"] == 33
