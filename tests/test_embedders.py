"""Embedders: SavedModel (fake colour model) and keras-hub CLIP (tiny, from a config)."""

import io

import numpy as np
import pytest
from PIL import Image

from dual_encoder.data.records import SkipCounter
from dual_encoder.evaluation import embedders
from dual_encoder.testing import COLOURS, build_tiny_clip_preset, build_tiny_siglip_preset, colour_image, shared_colour_model


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    return shared_colour_model(tmp_path_factory)


def test_saved_model_from_training_output_or_directly(colour_run):
    for path in (colour_run, colour_run / "saved_model"):
        embedder = embedders.load_embedder(str(path), progress=False)
        assert isinstance(embedder, embedders.SavedModelEmbedder)
    description = embedder.describe()
    assert description["type"] == "savedmodel"
    assert description["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)
    assert description["preprocessing"]["mode"] == "squash"


def test_mixed_sizes_batch_and_colours_match_their_names(colour_run):
    embedder = embedders.load_embedder(str(colour_run), batch_size=4, progress=False)
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    images = [colour_image(c, rng, (int(rng.integers(20, 90)), int(rng.integers(20, 90)))) for c in names]
    image_emb = embedder.encode_images(images)
    text_emb = embedder.encode_texts([f"a photo of something {c}." for c in names])
    assert image_emb.shape == (8, 32) and text_emb.shape == (8, 32)
    np.testing.assert_allclose(np.linalg.norm(image_emb, axis=1), 1, rtol=1e-5)
    assert (image_emb @ text_emb.T).argmax(axis=1).tolist() == list(range(8))


def test_unreadable_images_are_skipped_and_counted(colour_run, tmp_path):
    embedder = embedders.load_embedder(str(colour_run), batch_size=2, progress=False)
    good = tmp_path / "good.png"
    Image.fromarray(colour_image("red", np.random.default_rng(1))).save(good)
    png = io.BytesIO()
    Image.fromarray(colour_image("blue", np.random.default_rng(2))).save(png, "PNG")
    sources = [str(good), b"garbage", str(tmp_path / "missing.jpg"), png.getvalue()]
    skipped = SkipCounter()
    emb, ok = embedder.encode_image_sources(sources, skipped)
    assert ok.tolist() == [True, False, False, True] and emb.shape == (2, 32)
    assert skipped.as_dict() == {"missing_file": 1, "undecodable": 1}
    with pytest.raises(ValueError, match="not an image"):
        embedder.encode_images([b"garbage"])


@pytest.mark.parametrize(
    "mode, "
    "library", [("squash", "tensorflow"), ("crop", "tensorflow"), ("squash", "pillow"), ("crop", "pillow"), ("pad", "pillow")]
)
def test_image_prep_modes(mode, library):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = 255  # a white centre third
    out = embedders.ImagePrep(side=30, mode=mode, library=library)(wide)
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8
    if mode == "crop":
        assert out.mean() > 200  # only the centre is kept
    if mode == "pad":
        assert out[:5].max() == 0 and out[-5:].max() == 0  # black bars above and below


def test_image_prep_matches_the_training_resize_and_switches_library_when_needed():
    from dual_encoder.data.pipeline import resize_image

    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    expected = resize_image(image, (32, 32), "crop").numpy()
    assert np.abs(embedders.ImagePrep(32, "crop")(image) - expected).max() <= 0.5
    assert embedders.ImagePrep(224).replace(mode="pad").library == "pillow"
    assert embedders.ImagePrep(224).replace(side=64) == embedders.ImagePrep(64)
    with pytest.raises(ValueError, match="library='pillow'"):
        embedders.ImagePrep(224, "pad")


@pytest.mark.parametrize(
    "build, backbone, mode",
    [(build_tiny_clip_preset, "CLIPBackbone", "crop"), (build_tiny_siglip_preset, "SigLIPBackbone", "squash")],
)
def test_keras_hub_reference_from_local_preset(build, backbone, mode, tmp_path):
    embedder = embedders.load_embedder(str(build(tmp_path / "preset")), progress=False)
    assert isinstance(embedder, embedders.KerasHubClipEmbedder)
    images = [np.full((40, 50, 3), v, np.uint8) for v in (0, 128, 255)]
    image_emb = embedder.encode_images(images)
    text_emb = embedder.encode_texts(["a photo of the cat.", "dog", "the"])
    assert image_emb.shape[0] == 3 and text_emb.shape == (3, image_emb.shape[1])
    np.testing.assert_allclose(np.linalg.norm(text_emb, axis=1), 1, rtol=1e-5)
    description = embedder.describe()
    assert description["backbone"] == backbone
    assert description["preprocessing"] == {**description["preprocessing"], "side": 32, "mode": mode}


def test_preset_name_offline_gives_one_clear_error(monkeypatch):
    import keras_hub

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(embedders.EmbedderError, match="download only when online.*local preset directory"):
        embedders.load_embedder("clip_vit_base_patch16")


def test_a_training_run_with_its_own_config_json_is_not_a_preset(colour_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "saved_model").symlink_to(colour_run / "saved_model", target_is_directory=True)
    (run / "config.json").write_text('{"model": {"image_encoder": "tiny"}, "preset": "sample"}')
    assert isinstance(embedders.load_embedder(str(run), progress=False), embedders.SavedModelEmbedder)


def test_bad_model_arguments(tmp_path):
    with pytest.raises(embedders.EmbedderError, match="neither a folder nor a known keras-hub preset"):
        embedders.load_embedder("no_such_model")
    with pytest.raises(embedders.EmbedderError, match="saved_model/saved_model.pb"):
        embedders.load_embedder(str(tmp_path))


def test_prep_follows_the_training_run_when_recorded(tmp_path):
    (tmp_path / "saved_model").mkdir()
    assert embedders.training_image_prep(tmp_path / "saved_model") is None  # bare export: default
    (tmp_path / "results.json").write_text('{"towers": {"image": {"image_size": [299, 299], "resize": "crop"}}}')
    assert embedders.training_image_prep(tmp_path / "saved_model") == embedders.ImagePrep(299, "crop")


@pytest.mark.slow
def test_a_real_export_loads_through_the_same_path(tmp_path):
    """The DualEncoder export (tensorflow-text tokenizer, logit_scale as a variable collection)."""
    from dual_encoder.testing import export_tiny_dual_encoder

    captions = ["two red circles on the left", "a blue square at the top"]
    model = export_tiny_dual_encoder(tmp_path / "run", captions)
    embedder = embedders.load_embedder(str(tmp_path / "run"), progress=False)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, 50, 3), dtype=np.uint8) for h in (30, 70, 90)]
    assert embedder.encode_images(images).shape == (3, 16)
    assert embedder.encode_texts(captions).shape == (2, 16)
    assert embedder.logit_scale == pytest.approx(float(np.exp(model.logit_scale.numpy())), rel=1e-5)


def test_empty_inputs_give_zero_rows_of_the_embedding_width(colour_run, tmp_path):
    """[0, D], not [0, 0]: an empty result still stacks with others and has the model's width."""
    embedder = embedders.load_embedder(str(colour_run), progress=False)
    assert embedder.encode_texts([]).shape == (0, 32) and embedder.encode_images([]).shape == (0, 32)
    emb, ok = embedder.encode_image_sources([b"garbage", str(tmp_path / "missing.jpg")], SkipCounter())
    assert emb.shape == (0, 32) and emb.dtype == np.float32 and ok.tolist() == [False, False]
    assert embedder.embedding_dim == 32


@pytest.mark.parametrize("build", [build_tiny_clip_preset, build_tiny_siglip_preset])
def test_keras_hub_empty_inputs_have_the_embedding_width(build, tmp_path):
    embedder = embedders.load_embedder(str(build(tmp_path / "preset")), progress=False)
    width = embedder.encode_texts(["a photo of the cat."]).shape[1]
    assert embedder.encode_texts([]).shape == (0, width)
    assert embedder.encode_images([]).shape == (0, width)
    one = embedder.encode_images([np.zeros((8, 8, 3), np.uint8)])
    assert np.concatenate([embedder.encode_images([]), one]).shape == (1, width)


def test_wrong_texts_batch_sizes_and_image_sides_are_named(colour_run):
    from dual_encoder.errors import InvalidArgumentError

    embedder = embedders.load_embedder(str(colour_run), progress=False)
    for texts in (None, 42, b"bytes"):
        with pytest.raises(TypeError, match="texts must be a string or a list of strings"):
            embedder.encode_texts(texts)
    with pytest.raises(TypeError, match="item 1 is int 42"):
        embedder.encode_texts(["red", 42])
    for batch_size in (0, -1, "8"):
        with pytest.raises(InvalidArgumentError, match=r"batch_size \(--batch-size\) must be an integer in \[1, "):
            embedders.load_embedder(str(colour_run), batch_size=batch_size, progress=False)
    for side in (0, -5):
        with pytest.raises(InvalidArgumentError, match=r"--image-size\) must be an integer in \[1, 8192\]"):
            embedder.prep.replace(side=side)  # 0 used to mean "keep the old side", silently
    assert embedder.prep.replace(side=None) == embedder.prep
