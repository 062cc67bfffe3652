"""Class-per-folder sets, Animals-10 (Italian folders), TFDS classification sets (mocked)."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dual_encoder.data.records import SkipCounter
from dual_encoder.evaluation import datasets, runs


def _touch_images(folder: Path, count: int, suffix: str = ".jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i}{suffix}").write_bytes(b"not decoded here")


def test_animals10_mapping_is_the_right_one():
    # The dictionary shipped with the Kaggle download mixes directions and drops classes;
    # these are the ten folder names of the dataset and their meaning.
    assert datasets.ANIMALS10_CLASSES == {
        "cane": "dog", "cavallo": "horse", "elefante": "elephant", "farfalla": "butterfly",
        "gallina": "chicken", "gatto": "cat", "mucca": "cow", "pecora": "sheep",
        "ragno": "spider", "scoiattolo": "squirrel",
    }  # fmt: skip
    assert len(set(datasets.ANIMALS10_CLASSES.values())) == 10  # one English name per folder


def test_animals10_loads_italian_folders_with_english_labels(tmp_path):
    for italian in datasets.ANIMALS10_CLASSES:
        _touch_images(tmp_path / "raw-img" / italian, 2, ".jpeg")
    data = datasets.load_animals10(tmp_path)
    assert data.class_names == list(datasets.ANIMALS10_CLASSES.values())
    spider = data.class_names.index("spider")
    assert all("/ragno/" in s for s, label in zip(data.sources, data.labels) if label == spider)
    assert len(data) == 20 and data.info["missing_classes"] == []
    # raw-img itself, with only some classes present, also works and says what is missing
    only_two = tmp_path / "partial"
    _touch_images(only_two / "gatto", 1)
    _touch_images(only_two / "dog", 1)  # an English folder name is fine too
    partial = datasets.load_animals10(only_two)
    assert partial.class_names == ["dog", "cat"] and len(partial.info["missing_classes"]) == 8


def test_animals10_unknown_folder_shows_expected_layout(tmp_path):
    _touch_images(tmp_path / "raw-img" / "cane", 1)
    _touch_images(tmp_path / "raw-img" / "cani", 1)
    with pytest.raises(datasets.DataLayoutError, match=r"unexpected folders \['cani'\]") as error:
        datasets.load_animals10(tmp_path)
    assert "Expected layout" in str(error.value) and "scoiattolo" in str(error.value)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(datasets.DataLayoutError, match="no data folder") as error:
        datasets.load_class_folders(tmp_path / "nope")
    assert "<class name>/" in str(error.value)
    with pytest.raises(datasets.DataLayoutError, match="no class sub-folders"):
        datasets.load_class_folders(tmp_path)


def test_empty_class_folder_is_an_error(tmp_path):
    _touch_images(tmp_path / "cats", 2)
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    with pytest.raises(datasets.DataLayoutError, match="dogs contains no images"):
        datasets.load_class_folders(tmp_path)


def test_folder_dataset_finds_nested_images_and_cleans_names(tmp_path):
    _touch_images(tmp_path / "golden_retriever", 2, ".PNG")
    _touch_images(tmp_path / "golden_retriever" / "more", 1)
    _touch_images(tmp_path / "tabby", 1)
    (tmp_path / "tabby" / "README.md").write_text("ignored")
    data = datasets.load_classification_dataset("folder", tmp_path)
    assert data.class_names == ["golden retriever", "tabby"]
    assert data.labels.tolist() == [0, 0, 0, 1]
    assert data.info["images_per_class"] == {"golden retriever": 3, "tabby": 1}


def test_unknown_dataset_and_missing_data_dir():
    with pytest.raises(datasets.DataLayoutError, match="unknown classification dataset"):
        datasets.load_classification_dataset("imagenet", "/tmp")
    with pytest.raises(datasets.DataLayoutError, match="needs --data-dir"):
        datasets.load_classification_dataset("animals10", None)


def test_tfds_classes_from_metadata_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        data = datasets.load_classification_dataset("tfds:rock_paper_scissors", split="test")
    assert data.class_names == ["rock", "paper", "scissors"]
    assert len(data) == 4 and isinstance(data.sources[0], bytes)
    assert np.all((data.labels >= 0) & (data.labels < 3))
    assert data.ids[0].startswith("tfds:rock_paper_scissors/") and data.info["split"] == "test"
    with pytest.raises(datasets.DataLayoutError, match="tfds build rock_paper_scissors"):
        datasets.load_tfds_classification("rock_paper_scissors", "test", data_dir=str(tmp_path))


def _styles_csv(tmp_path: Path) -> Path:
    """A styles.csv in the Fashion layout: ids, a label column, images/<id>.jpg (one listed but missing)."""
    rows = [("1", "Watches"), ("2", "Watches"), ("3", "Sandals"), ("4", "Watches"), ("5", "Belts"), ("6", "Sandals"),
            ("7", "Sandals"), ("8", ""), ("9", "Caps")]  # fmt: skip
    _touch_images(tmp_path / "images", 0)
    for image_id, _ in rows:
        if image_id != "9":  # 9 is listed but has no file
            (tmp_path / "images" / f"{image_id}.jpg").write_bytes(b"not decoded here")
    lines = ["id,gender,articleType"] + [f"{i},Men,{label}" for i, label in rows] + ["2,Women,Wallets", "7,Men,Sandals"]
    (tmp_path / "styles.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "styles.csv"


def test_csv_labels_with_paths_skips_and_conflicts(tmp_path):
    data = datasets.load_csv_classification(_styles_csv(tmp_path), "id", "articleType", "images/{}.jpg")
    # 2 has two labels (dropped), 8 has none, 9 has no file; 7's repeated row is merged
    assert data.class_names == ["Belts", "Sandals", "Watches"]
    assert [Path(s).name for s in data.sources] == ["1.jpg", "3.jpg", "4.jpg", "5.jpg", "6.jpg", "7.jpg"]
    assert data.labels.tolist() == [2, 1, 2, 0, 1, 1] and data.ids == data.sources
    skipped = data.info["skipped_by_source"]
    assert skipped["conflicting_labels"] == 1 and skipped["missing_file"] == 1 and skipped["empty_caption"] == 1
    assert data.info["images_per_class"] == {"Belts": 1, "Sandals": 3, "Watches": 2}


def test_csv_labels_restricted_to_ids_and_top_classes(tmp_path):
    csv_path = _styles_csv(tmp_path)
    held_out = datasets.load_csv_classification(csv_path, "id", "articleType", "images/{}.jpg", only_ids=["3", "4", "5", "42"])
    assert held_out.class_names == ["Belts", "Sandals", "Watches"] and held_out.labels.tolist() == [1, 2, 0]
    assert held_out.info["only_ids"] == 4 and held_out.info["ids_not_in_csv"] == 1
    top = datasets.keep_top_classes(datasets.load_csv_classification(csv_path, "id", "articleType", "images/{}.jpg"), 2)
    assert top.class_names == ["Sandals", "Watches"] and top.labels.tolist() == [1, 0, 1, 0, 0]
    assert [Path(s).name for s in top.sources] == ["1.jpg", "3.jpg", "4.jpg", "6.jpg", "7.jpg"]
    assert top.info["top_classes"] == {"kept": 2, "classes_dropped": 1, "images_dropped": 1}
    assert top.info["images_per_class"] == {"Sandals": 3, "Watches": 2} and top.info["num_images"] == 5
    tied = datasets.keep_top_classes(held_out, 2)  # one image each: ties go by name
    assert tied.class_names == ["Belts", "Sandals"]
    with pytest.raises(ValueError, match="at least 1"):
        datasets.keep_top_classes(held_out, 0)


def test_csv_labels_clear_errors(tmp_path):
    csv_path = _styles_csv(tmp_path)
    with pytest.raises(ValueError, match="no column 'colour'; the columns are: id, gender, articleType"):
        datasets.load_csv_classification(csv_path, "id", "colour", "images/{}.jpg")
    with pytest.raises(datasets.DataLayoutError, match="no image with a 'articleType' label among the ids"):
        datasets.load_csv_classification(csv_path, "id", "articleType", "images/{}.jpg", only_ids=["404"])


def test_symlinked_sub_folders_are_followed_once_and_hidden_files_left_out(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _touch_images(elsewhere, 2)
    root = tmp_path / "set"
    _touch_images(root / "elephant", 1)
    (root / "elephant" / "more").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(elsewhere, target_is_directory=True)  # must not recurse forever
    (root / "elephant" / ".hidden.jpg").write_bytes(b"x")
    (root / "elephant" / "notes.txt").write_text("not an image")
    found = [p.relative_to(root).as_posix() for p in datasets.images_in(root)]
    assert found == ["elephant/0.jpg", "elephant/more/0.jpg", "elephant/more/1.jpg"]
    data = datasets.load_classification_dataset("folder", str(root))
    assert len(data.sources) == 3


def test_names_that_are_not_utf8_are_left_out_and_named(tmp_path, caplog):
    """One such file used to end `evaluate.py search --images DIR` in a TypeError from TensorFlow's file layer."""
    root = tmp_path / "photos"
    _touch_images(root, 2)
    raw_root = os.fsencode(root)
    (Path(os.fsdecode(raw_root + b"/caf\xe9.jpg"))).write_bytes(b"latin-1 name")
    os.mkdir(raw_root + b"/d\xe9j\xe0")  # a sub-folder too: every path below it has the same problem
    Path(os.fsdecode(raw_root + b"/d\xe9j\xe0/inside.jpg")).write_bytes(b"x")
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        found = datasets.images_in(root, skipped)
    assert [p.name for p in found] == ["0.jpg", "1.jpg"]
    assert all(tf.io.gfile.exists(str(p)) for p in found)  # every path returned is one TensorFlow can take
    assert repr(os.fsdecode(b"caf\xe9.jpg")) in caplog.text and repr(os.fsdecode(b"d\xe9j\xe0")) in caplog.text
    assert "not valid UTF-8" in caplog.text and skipped.as_dict() == {"non_utf8_name": 2}
    assert runs.list_images(root) == [str(p) for p in found]
