"""Index folders: built once, updated incrementally, one model's only, swapped in whole; FAISS backends."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from dual_encoder.evaluation.embedders import load_embedder
from dual_encoder.search import backends, index
from dual_encoder.testing import build_colour_saved_model, colour_image, shared_colour_model, write_colour_folders


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return load_embedder(str(shared_colour_model(tmp_path_factory)), progress=False)


@pytest.fixture
def photos(tmp_path):
    return write_colour_folders(tmp_path / "photos", ["red", "blue", "green"], per_class=3, seed=4)


def test_an_index_finds_what_the_text_asks_for_and_records_its_model(embedder, photos, tmp_path):
    built, report = index.build_index(embedder, photos, tmp_path / "idx")
    assert (report["images"], report["embedded"], report["backend"], report["recall_at_10"]) == (9, 9, "exact", 1.0)
    matches = index.load_index(tmp_path / "idx", embedder.fingerprint()).search_text(embedder, "a red thing", k=3)
    assert [path.split(os.sep)[0] for path, _ in matches] == ["red"] * 3  # paths relative to the folder
    assert matches[0][1] >= matches[-1][1]


def test_a_rebuild_embeds_only_new_or_changed_files_and_drops_deleted_ones(embedder, photos, tmp_path):
    index.build_index(embedder, photos, tmp_path / "idx")
    Image.fromarray(colour_image("blue", np.random.default_rng(1))).save(photos / "new_blue.png")
    os.remove(photos / "green" / "0.png")
    _, report = index.build_index(embedder, photos, tmp_path / "idx")
    assert (report["images"], report["embedded"], report["reused"], report["removed"]) == (9, 1, 8, 1)
    loaded = index.load_index(tmp_path / "idx")
    assert "new_blue.png" in loaded.paths and os.path.join("green", "0.png") not in loaded.paths


def test_another_model_is_refused_unless_asked_to_rebuild(embedder, photos, tmp_path):
    index.build_index(embedder, photos, tmp_path / "idx")
    other = load_embedder(str(build_colour_saved_model(tmp_path / "other" / "saved_model", seed=1)), progress=False)
    with pytest.raises(index.IndexMismatchError, match="built with another model.*--rebuild"):
        index.build_index(other, photos, tmp_path / "idx")
    _, report = index.build_index(other, photos, tmp_path / "idx", rebuild=True)
    assert report["embedded"] == 9 and report["reused"] == 0


def test_a_build_that_dies_leaves_the_old_index_whole(embedder, photos, tmp_path, monkeypatch):
    index.build_index(embedder, photos, tmp_path / "idx")
    before = (tmp_path / "idx" / index.KEYS).read_bytes()
    Image.fromarray(colour_image("red", np.random.default_rng(2))).save(photos / "late.png")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as kill -9 would stop it, mid-write

    monkeypatch.setattr(index.files, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        index.build_index(embedder, photos, tmp_path / "idx")
    monkeypatch.undo()
    assert (tmp_path / "idx" / index.KEYS).read_bytes() == before and len(index.load_index(tmp_path / "idx")) == 9
    assert sorted(p.name for p in tmp_path.iterdir() if "idx" in p.name) == ["idx"]  # no temporary folder left
    assert index.build_index(embedder, photos, tmp_path / "idx")[1]["embedded"] == 1


def test_a_folder_that_is_not_an_index_is_never_overwritten(embedder, photos, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(index.IndexMismatchError, match="not an index folder"):
        index.build_index(embedder, photos, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", ["hnsw", "ivfpq"])
def test_faiss_backends_agree_with_exact_search_on_clustered_vectors(name, tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 64))
    vectors = centres[rng.integers(0, 50, 20_000)] + 0.3 * rng.normal(size=(20_000, 64))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    queries = vectors[:200] + 0.05 * rng.normal(size=(200, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    backend = backends.build_backend(name, vectors)
    recall = backends.recall_at(backend, backends.ExactBackend(vectors), queries, 10)
    assert recall >= (0.9 if name == "hnsw" else 0.5), recall  # IVF-PQ trades recall for memory
    backend.save(str(tmp_path / "b.bin"))
    again = backends.load_backend(name, str(tmp_path / "b.bin"))
    np.testing.assert_array_equal(again.search(queries[:5], 10)[1], backend.search(queries[:5], 10)[1])


def test_auto_chooses_by_size_and_unknown_backends_are_named():
    assert [backends.choose_backend("auto", n) for n in (10, 10**6, 10**8)] == ["exact", "hnsw", "ivfpq"]
    with pytest.raises(ValueError, match="--backend 'annoy'"):
        backends.choose_backend("annoy", 10)


def test_the_index_copes_with_unreadable_images(embedder, photos, tmp_path):
    (photos / "broken.jpg").write_bytes(b"not an image")
    _, report = index.build_index(embedder, photos, tmp_path / "idx")
    assert report["images"] == 9 and report["skipped"].get("undecodable") == 1
    shutil.rmtree(photos)
    photos.mkdir()
    (photos / "broken.jpg").write_bytes(b"still not an image")
    with pytest.raises(ValueError, match="could be read"):
        index.build_index(embedder, photos, tmp_path / "idx2")


def test_the_index_and_search_commands(photos, tmp_path, tmp_path_factory, capsys):
    from dual_encoder.cli import evaluate

    model = str(shared_colour_model(tmp_path_factory))
    common = ["--model", model, "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert evaluate.main(["index", "--images", str(photos), "--index", str(tmp_path / "idx"), *common]) == 0
    assert "indexed 9 images" in capsys.readouterr().out
    out = tmp_path / "out"
    assert evaluate.main(["search", "a blue thing", "--index", str(tmp_path / "idx"), "--top-k", "3",
                          "--output-dir", str(out), *common]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert all(f"{os.sep}blue{os.sep}" in line for line in printed[:3]) and (out / "search_results.png").exists()
    other = str(build_colour_saved_model(tmp_path / "other" / "saved_model", seed=3))
    assert evaluate.main(["search", "blue", "--index", str(tmp_path / "idx"), "--model", other, "--quiet"]) == 2
    assert "built with another model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse names the choices and exits 2
        evaluate.main(["index", "--images", str(photos), "--index", str(tmp_path / "idx"), "--backend", "annoy", *common])
    assert refused.value.code == 2 and "invalid choice: 'annoy'" in capsys.readouterr().err
