"""train.py --init: a keras-hub CLIP or SigLIP preset as both towers, its projections as the heads.

Before any step the dual encoder is the checkpoint: its embeddings (in memory, in model.keras and
in the exported SavedModel) equal the preset's own `get_vision_embeddings` / `get_text_embeddings`,
L2-normalised. Tiny random presets are built from configs and saved as preset folders; shards are
written by `python -m dual_encoder.data`; nothing is downloaded.
"""

import json
import re

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import config as run_config
from dual_encoder import towers, training
from dual_encoder.cli import evaluate as evaluate_cli
from dual_encoder.cli import train as train_cli
from dual_encoder.errors import InvalidArgumentError
from dual_encoder.testing import (
    build_tiny_clip_preset,
    build_tiny_siglip_preset,
    read_h5_weights,
    write_colour_folders,
    write_sample_shards_with_the_data_cli,
)

TEXTS = ["a photo of a cat", "two red circles on the left", "the dog is here.", "a blue star, at the top"]
COSINE = 0.9999
SIGLIP_SCALE, SIGLIP_BIAS = float(np.log(10.0)), -5.0


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    return {"clip": build_tiny_clip_preset(root / "clip"),
            "siglip": build_tiny_siglip_preset(root / "siglip", logit_scale=SIGLIP_SCALE, logit_bias=SIGLIP_BIAS)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_sample_shards_with_the_data_cli(tmp_path_factory.mktemp("data") / "S", images=96)


def reference(preset):
    """The preset's own embeddings (keras-hub), L2-normalised: images at its size, and texts."""
    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    preprocessor_cls = getattr(keras_hub.models, type(backbone).__name__.replace("Backbone", "Preprocessor"))
    text_preprocessor = preprocessor_cls.from_preset(str(preset), image_converter=None)
    converter = preprocessor_cls.image_converter_cls.from_preset(str(preset))
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    image = np.array(backbone.get_vision_embeddings(converter(images.astype("float32"))))
    tokens = text_preprocessor({"prompts": TEXTS, "images": None})["token_ids"]
    text = np.array(backbone.get_text_embeddings(tokens))
    normalise = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    return images, normalise(image), normalise(text), backbone, text_preprocessor


def cosines(a, b):
    return np.sum(a * b, axis=-1)


def init_model(preset, **model_fields):
    config = run_config.finetune(str(preset))
    for key, value in model_fields.items():
        setattr(config.model, key, value)
    image, text, stats = training.build_towers(config.validate(), [])
    return config, image, text, stats, training.build_model(config, image, text)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_the_untrained_model_is_the_checkpoint(presets, family, tmp_path):
    images, image_ref, text_ref, backbone, _ = reference(presets[family])
    config, image, text, stats, model = init_model(presets[family])
    assert stats == {"chosen": 16, "source": "checkpoint"}  # the preset's own sequence length
    assert cosines(model.embed_images({"images": images.astype("float32")}).numpy(), image_ref).min() >= COSINE
    assert cosines(model.encode_texts(tf.constant(TEXTS)).numpy(), text_ref).min() >= COSINE
    head = backbone.get_layer(f"{family}_head")
    assert float(model.logit_scale.numpy()) == pytest.approx(float(head.logit_scale.numpy()))
    if family == "siglip":  # the loss follows the checkpoint, and the bias comes with it
        assert model.loss_name == "siglip" and float(model.logit_bias.numpy()) == pytest.approx(SIGLIP_BIAS)
        assert model.head_bias == {"image": True, "text": True}  # SigLIP's text head; an identity image head
    else:
        assert model.loss_name == "infonce" and model.logit_bias is None
        assert model.head_bias == {"image": False, "text": False}  # CLIP's projections have no bias
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.encode_texts(tf.constant(TEXTS)).numpy(), model.encode_texts(tf.constant(TEXTS)),
                               atol=1e-6)
    np.testing.assert_allclose(reloaded.embed_images({"images": images.astype("float32")}).numpy(),
                               model.embed_images({"images": images.astype("float32")}), atol=1e-6)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_captions_tokenize_as_the_checkpoints_preprocessor(presets, family):
    *_, preprocessor = reference(presets[family])
    pair = towers.load_preset_pair(str(presets[family]))
    captions = ["Two RED circles  on the left.", "a photo of the cat", "the"]
    ours = pair.text.preprocessor(tf.constant(captions))["token_ids"].numpy()
    theirs = preprocessor({"prompts": captions, "images": None})["token_ids"].numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert pair.text.spec["init"]["backbone"] == f"{'CLIP' if family == 'clip' else 'SigLIP'}Backbone"


def test_the_loss_flag_overrides_the_checkpoints_loss(presets):
    *_, model = init_model(presets["clip"], loss="siglip")
    assert model.loss_name == "siglip" and float(model.logit_bias.numpy()) == -10.0  # SigLIP's own start


def test_trainable_layers_unlock_the_last_transformer_blocks(tmp_path):
    preset = build_tiny_clip_preset(tmp_path / "clip2", num_layers=2)

    def trainable(n):  # the encoder's layer names, less their prefix (clip_vision_encoder_, _1_ when built again)
        *_, model = init_model(preset, trainable_layers=n)
        return {re.sub(r"^clip_vision_encoder(_\d+)?_", "", v.path.split("/")[0])
                for v in model.image_encoder.trainable_variables}

    assert trainable(None) == {"embedding", "pre_layer_norm", "encoder_block_0", "encoder_block_1", "layer_norm"}
    assert trainable(1) == {"encoder_block_1", "layer_norm"}  # the last block and what follows it
    assert trainable(2) == trainable(5) == {"encoder_block_0", "encoder_block_1", "layer_norm"}  # never the embeddings
    assert trainable(0) == set()


def test_a_missing_download_is_one_clear_error(monkeypatch, shards, tmp_path, capsys):
    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(towers.PretrainedWeightsUnavailable, match="(?s)could not be downloaded.*Pass instead: a local CLIP"):
        towers.load_preset_pair("clip_vit_base_patch16")
    argv = ["--init", "clip_vit_base_patch16", "--tfrecords", str(shards), "--output-dir", str(tmp_path / "run"), "--quiet"]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: keras-hub preset 'clip_vit_base_patch16' (--init) could not be downloaded")
    assert "Pass instead: a local CLIP or SigLIP preset folder as --init DIR" in err and "Traceback" not in err


def test_init_takes_only_clip_or_siglip(tmp_path):
    with pytest.raises(InvalidArgumentError, match="unknown --init tower 'resnet50'"):
        towers.load_preset_pair("resnet50")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        towers.load_preset_pair(str(tmp_path / "missing") + "/")


def test_rules_of_init_wise_ft_and_grad_cache_are_checked():
    run = run_config.get_preset("finetune")
    with pytest.raises(InvalidArgumentError, match="finetune preset starts from a checkpoint: pass --init"):
        run.validate()
    run = run_config.get_preset("reference")
    run.finetune.wise_ft = 0.5
    with pytest.raises(InvalidArgumentError, match="--wise-ft 0.5 .* needs --init"):
        run.validate()
    run = run_config.finetune("some/preset")
    run.finetune.grad_cache_chunk, run.train.jit_compile = 8, True
    with pytest.raises(InvalidArgumentError, match="--grad-cache-chunk 8 .* drop --jit-compile"):
        run.validate()
    run = run_config.finetune("some/preset")
    run.model.class_prior = True
    with pytest.raises(InvalidArgumentError, match="--class-prior .* --no-class-prior"):
        run.validate()
    run.model.class_prior, run.model.image_size = False, 64
    with pytest.raises(InvalidArgumentError, match="--image-size 64: with --init the image size is the checkpoint's"):
        run.validate()
    with pytest.raises(InvalidArgumentError, match=r"--wise-ft .*\[0, 1\], got 1.5"):
        run.finetune.wise_ft = 1.5
    run = run_config.get_preset("sample")
    run.finetune.warmup_fraction = 0.1
    with pytest.raises(InvalidArgumentError, match="--warmup-fraction 0.1 needs --lr-schedule cosine"):
        run.validate()
    assert run_config.RunConfig.from_dict(run_config.finetune("p").to_dict()).to_dict() == run_config.finetune("p").to_dict()


def test_the_cosine_schedule_warms_up_then_decays_to_zero():
    config = run_config.finetune("p")
    schedule = training.optimizer.learning_rate(config, steps_per_epoch=20)  # 5 epochs: 100 steps, 10 of warmup
    values = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    assert values[0] == 0.0 and values[1] == pytest.approx(5e-6) and values[2] == pytest.approx(1e-5)
    assert values[3] == pytest.approx(5e-6, rel=1e-3) and values[4] == pytest.approx(0.0, abs=1e-12)
    assert training.optimizer.learning_rate(run_config.get_preset("sample")) == 2e-3  # constant elsewhere


def saved_embeddings(run_dir, images):
    import tensorflow_text  # noqa: F401  (the tokenizer ops of encode_text)

    model = tf.saved_model.load(str(run_dir / "saved_model"))
    return model, model.encode_image(tf.constant(images)).numpy(), model.encode_text(tf.constant(TEXTS)).numpy()


def train(argv, shards, output_dir):
    assert train_cli.main(["--tfrecords", str(shards), "--output-dir", str(output_dir), "--quiet", *argv]) == 0
    return output_dir


@pytest.fixture(scope="module")
def untrained_run(presets, shards, tmp_path_factory):
    """train.py --init P --tfrecords S --epochs 1 --learning-rate 0 --output-dir R0"""
    return train(["--init", str(presets["clip"]), "--epochs", "1", "--learning-rate", "0"], shards,
                 tmp_path_factory.mktemp("runs") / "R0")


@pytest.mark.slow
def test_an_epoch_at_learning_rate_0_exports_the_checkpoint(presets, untrained_run):
    images, image_ref, text_ref, *_ = reference(presets["clip"])
    _, image, text = saved_embeddings(untrained_run, images)
    assert cosines(image, image_ref).min() >= COSINE and cosines(text, text_ref).min() >= COSINE
    results = json.loads((untrained_run / "results.json").read_text())
    assert results["config"]["preset"] == "finetune" and results["towers"]["image"]["init"]["loss"] == "infonce"


@pytest.mark.slow
def test_evaluate_on_the_run_folder_reproduces_evaluate_on_the_preset(presets, untrained_run, tmp_path):
    folder = write_colour_folders(tmp_path / "colours", ["red", "green", "blue"], per_class=3, side=32)  # the tower's size

    def zero_shot(model):
        out = tmp_path / f"eval-{model.name}"
        argv = ["--model", str(model), "--dataset", "folder", "--data-dir", str(folder), "--no-cache", "--quiet",
                "--output-dir", str(out)]
        assert evaluate_cli.main(argv) == 0
        return json.loads((out / "report.json").read_text())

    ours, theirs = zero_shot(untrained_run), zero_shot(presets["clip"])
    assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    for key in ("accuracy", "macro_f1", "mean_per_class_recall"):
        assert ours[key] == pytest.approx(theirs[key])


@pytest.mark.slow
def test_the_exact_check_other_tools_run(presets, shards, untrained_run, tmp_path):
    """--epochs 3 lowers the loss; GradCache chunks of 8 end with the same last.weights.h5 as
    whole batches of 32; --epochs 2 --wise-ft 0 exports P's embeddings."""
    base = ["--init", str(presets["clip"])]
    longer = train([*base, "--epochs", "3"], shards, tmp_path / "R1")
    log = training.read_log(longer / "log.csv")
    assert len(log["loss"]) == 3 and log["loss"][-1] < log["loss"][0] and log["val_loss"][-1] < log["val_loss"][0]

    cache = [*base, "--batch-size", "32", "--dropout", "0", "--train-image-tower", "--train-text-tower"]
    whole = read_h5_weights(train(cache, shards, tmp_path / "G") / "checkpoints" / "last.weights.h5")
    chunked = read_h5_weights(train([*cache, "--grad-cache-chunk", "8"], shards, tmp_path / "G8") / "checkpoints"
                              / "last.weights.h5")
    start = read_h5_weights(untrained_run / "checkpoints" / "last.weights.h5")
    assert sorted(whole) == sorted(chunked)
    for name, value in whole.items():
        # The weights to 1e-5; Adam's moments are running means of gradients summed in another order
        # (one step's gradients agree to ~2e-7 of the largest, test_grad_cache.py): 1e-4 of their size.
        tolerance = 1e-4 * max(1.0, float(np.abs(value).max())) if name.startswith("optimizer") else 1e-5
        np.testing.assert_allclose(chunked[name], value, rtol=0, atol=tolerance, err_msg=name)
    moved = max(float(np.abs(value - start[name]).max()) for name, value in whole.items()
                if not name.startswith("optimizer") and name in start)
    assert moved > 1e-5  # the towers really trained

    mixed = train([*base, "--epochs", "2", "--wise-ft", "0"], shards, tmp_path / "W")
    images, image_ref, text_ref, *_ = reference(presets["clip"])
    _, image, text = saved_embeddings(mixed, images)
    assert cosines(image, image_ref).min() >= COSINE and cosines(text, text_ref).min() >= COSINE
    results = json.loads((mixed / "results.json").read_text())
    assert results["wise_ft"]["alpha"] == 0.0 and results["wise_ft"]["weights_mixed"] > 0


@pytest.mark.slow
def test_siglip_with_locked_towers_exports_the_checkpoint_with_its_bias(presets, shards, tmp_path):
    """Both towers locked: the epochs train the heads on cached features, the export is still the checkpoint."""
    argv = ["--init", str(presets["siglip"]), "--epochs", "1", "--learning-rate", "0", "--no-train-image-tower",
            "--no-train-text-tower"]
    run = train(argv, shards, tmp_path / "RS")
    assert json.loads((run / "results.json").read_text())["feature_cache"]["used"] is True
    images, image_ref, text_ref, *_ = reference(presets["siglip"])
    model, image, text = saved_embeddings(run, images)
    assert cosines(image, image_ref).min() >= COSINE and cosines(text, text_ref).min() >= COSINE
    assert float(model.logit_bias[0].numpy()) == pytest.approx(SIGLIP_BIAS)
    assert float(model.logit_scale[0].numpy()) == pytest.approx(SIGLIP_SCALE)
    reloaded = keras.models.load_model(run / "model.keras")
    assert reloaded.loss_name == "siglip"  # the loss followed the checkpoint
