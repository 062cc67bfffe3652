"""The search SavedModel: plain TensorFlow in a fresh process searches an index as PhotoIndex does."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from dual_encoder.cli import evaluate
from dual_encoder.evaluation.embedders import load_embedder
from dual_encoder.search import search_model
from dual_encoder.search.index import build_index
from dual_encoder.testing import build_colour_saved_model, build_tiny_clip_preset, shared_colour_model, write_colour_folders

QUERIES = ["a red thing", "blue", "something green on grey"]

# Imports only TensorFlow and tensorflow_text, as a TF Serving user's program would.
FRESH_PROCESS = """
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  the tokenizer ops
assert not [name for name in sys.modules if name.startswith("dual_encoder")]
searcher = tf.saved_model.load(sys.argv[1])
queries, k = json.loads(sys.argv[2]), int(sys.argv[3])

def plain(found):
    return {"keys": [[key.decode() for key in row] for row in found["keys"].numpy()], "scores": found["scores"].numpy().tolist()}

print(json.dumps({
    "signature": plain(searcher.signatures["search"](queries=tf.constant(queries), k=tf.constant(k))),
    "method": plain(searcher.search(tf.constant(queries), k)),
    "signatures": sorted(searcher.signatures),
    "size": int(searcher.index_size.numpy()),
    "root": searcher.index_root.numpy().decode(),
    "model": json.loads(searcher.model_description.numpy())["type"],
    "encode_text": searcher.encode_text(tf.constant(queries)).numpy().tolist(),
}))
"""


def search_in_a_fresh_process(path, queries, k) -> dict:
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(path), json.dumps(queries), str(k)],
                          capture_output=True, text=True, timeout=300, cwd=path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_same_as_the_index(found: dict, index, embedder, queries, k) -> None:
    """Keys in the same order and scores to 1e-5, for the signature and the method alike."""
    expected = [index.search_text(embedder, query, k) for query in queries]
    for way in ("signature", "method"):
        assert found[way]["keys"] == [[path for path, _ in matches] for matches in expected]
        np.testing.assert_allclose(found[way]["scores"], [[score for _, score in matches] for matches in expected], atol=1e-5)


def indexed(root, model_path):
    """An index over nine coloured pictures (red/, blue/, green/) built with the model at `model_path`."""
    photos = write_colour_folders(root / "photos", ["red", "blue", "green"], per_class=3)
    embedder = load_embedder(str(model_path), progress=False)
    index, _ = build_index(embedder, photos, root / "index")
    return SimpleNamespace(embedder=embedder, index=index, path=root / "index", photos=photos)


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    return indexed(tmp_path_factory.mktemp("colour_search"), shared_colour_model(tmp_path_factory))


@pytest.fixture(scope="module")
def searcher(colour, tmp_path_factory):
    out = search_model.export_search_model(colour.path, tmp_path_factory.mktemp("exported") / "search")
    return tf.saved_model.load(str(out))


def error_line(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and len(error.splitlines()) == 1, error
    return error


def test_a_fresh_tensorflow_process_searches_exactly_like_the_index(colour, tmp_path, capsys):
    out = tmp_path / "search"
    assert evaluate.main(["export-search", "--index", str(colour.path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert str(out) in printed[0] and "9 images" in printed[0]
    assert len(printed) == 4 and "tf.saved_model.load" in printed[2] and ".search(" in printed[3]
    found = search_in_a_fresh_process(out, QUERIES, 4)
    assert_same_as_the_index(found, colour.index, colour.embedder, QUERIES, 4)
    assert [key.split("/")[0] for key in found["signature"]["keys"][0][:3]] == ["red"] * 3
    assert {"search", "serving_default", "encode_text"} <= set(found["signatures"])
    assert (found["size"], found["root"], found["model"]) == (9, str(colour.photos.resolve()), "savedmodel")
    np.testing.assert_allclose(found["encode_text"], colour.embedder.encode_texts(QUERIES), atol=1e-5)


@pytest.mark.slow
def test_a_trained_dual_encoder_with_a_tensorflow_text_tokenizer_survives_re_saving(tmp_path):
    """The export's restored functions call FastWordpiece ops: they must be saved again intact."""
    from dual_encoder.testing import export_tiny_dual_encoder

    captions = ["two red circles on the left", "a blue square at the top", "a green thing"]
    export_tiny_dual_encoder(tmp_path / "run", captions)
    built = indexed(tmp_path, tmp_path / "run")
    out = search_model.export_search_model(built.path, tmp_path / "search", model=str(tmp_path / "run"))
    queries = [*captions, "an unseen word zebra"]
    found = search_in_a_fresh_process(out, queries, 5)
    assert_same_as_the_index(found, built.index, built.embedder, queries, 5)


def test_k_beyond_the_index_returns_all_of_it_and_k_below_1_is_refused(searcher, colour):
    found = searcher.search(tf.constant(["a red thing", "blue"]), 50)
    assert found["keys"].shape == (2, 9) and found["scores"].shape == (2, 9)
    assert sorted(key.decode() for key in found["keys"].numpy()[0]) == sorted(colour.index.paths)
    assert np.all(np.diff(found["scores"].numpy(), axis=1) <= 0)  # best first
    assert searcher.search(tf.constant([], tf.string), 3)["keys"].shape == (0, 3)
    for k in (0, -2):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"k \(matches per query\) must be at least 1"):
            searcher.search(tf.constant(["red"]), k)


def test_queries_scored_in_blocks_give_the_same_matches(searcher, colour, tmp_path, monkeypatch):
    monkeypatch.setattr(search_model, "SCORE_BLOCK", 2 * 9)  # two queries per block: three queries make a short last one
    blocked = tf.saved_model.load(str(search_model.export_search_model(colour.path, tmp_path / "blocked")))
    whole, parts = (model.search(tf.constant(QUERIES), 4) for model in (searcher, blocked))
    assert parts["keys"].numpy().tolist() == whole["keys"].numpy().tolist()
    np.testing.assert_allclose(parts["scores"], whole["scores"], atol=1e-6)
    assert blocked.search(tf.constant([], tf.string), 2)["scores"].shape == (0, 2)


def test_an_index_of_a_keras_hub_preset_is_refused_with_how_to_get_a_saved_model(tmp_path, capsys):
    preset = indexed(tmp_path, build_tiny_clip_preset(tmp_path / "clip"))
    assert evaluate.main(["export-search", "--index", str(preset.path), "--out", str(tmp_path / "search")]) == 2
    error = error_line(capsys)
    assert "keras-hub preset" in error and "only exported SavedModels" in error and "evaluate.py index --model" in error
    assert not (tmp_path / "search").exists()


def test_another_model_or_no_model_is_refused_by_its_flag(colour, tmp_path, capsys):
    other = build_colour_saved_model(tmp_path / "other" / "saved_model", seed=1)
    common = ["export-search", "--index", str(colour.path), "--out", str(tmp_path / "search")]
    assert evaluate.main([*common, "--model", str(other.parent)]) == 2
    assert "is not the model --index" in error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert evaluate.main([*common, "--model", str(tmp_path / "empty")]) == 2
    assert f"--model {tmp_path / 'empty'} holds no exported SavedModel" in error_line(capsys)
    assert not (tmp_path / "search").exists()


def test_a_missing_index_folder_is_one_error(tmp_path, capsys):
    assert evaluate.main(["export-search", "--index", str(tmp_path / "nowhere"), "--out", str(tmp_path / "search")]) == 2
    assert f"--index {tmp_path / 'nowhere'}: not a complete index folder" in error_line(capsys)


def test_only_a_previous_search_export_is_replaced(colour, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert evaluate.main(["export-search", "--index", str(colour.path), "--out", str(tmp_path / "mine")]) == 2
    assert "--out" in error_line(capsys) and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    for _ in range(2):  # the second export replaces the first
        assert evaluate.main(["export-search", "--index", str(colour.path), "--out", str(tmp_path / "search")]) == 0
    assert (tmp_path / "search" / search_model.SEARCH_RECORD).is_file()


def test_an_export_killed_midway_leaves_the_old_folder_or_none(colour, tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as kill -9 would stop it, after the SavedModel and before its record

    search_model.export_search_model(colour.path, tmp_path / "old")
    before = (tmp_path / "old" / search_model.SEARCH_RECORD).read_bytes()
    monkeypatch.setattr(search_model.files, "write_json", killed)
    for out in ("new", "old"):
        with pytest.raises(KeyboardInterrupt):
            search_model.export_search_model(colour.path, tmp_path / out)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["old"]  # no half-written folder, no temporary left
    assert (tmp_path / "old" / search_model.SEARCH_RECORD).read_bytes() == before
    reloaded = tf.saved_model.load(str(tmp_path / "old"))  # kept in a name: a temporary's variables die mid-call
    assert reloaded.search(tf.constant(["red"]), 1)["keys"].shape == (1, 1)


def test_help_explains_every_flag():
    from dual_encoder.cli import search_export

    text = search_export.build_parser().format_help()
    assert all(flag in text for flag in ("--index PATH", "--out DIR", "--model M", "evaluate.py export-search"))
