"""Templates, prompt ensembling (checked by hand) and zero-shot with an informative model."""

import numpy as np
import pytest

from dual_encoder.evaluation import embedders, metrics, zeroshot
from dual_encoder.testing import COLOURS, colour_image, shared_colour_model


def test_template_sets():
    assert zeroshot.resolve_templates() == ("default", ["a photo of a {}."])
    name, imagenet = zeroshot.resolve_templates("imagenet")
    assert len(imagenet) == 80 and len(set(imagenet)) == 80
    assert all(t.count("{}") == 1 for t in imagenet)
    name, animals = zeroshot.resolve_templates("auto", dataset="animals10")
    assert name == "animals" and "a photo of a {}, a type of animal." in animals
    assert zeroshot.resolve_templates("auto", dataset="folder")[0] == "default"
    assert zeroshot.resolve_templates("a sketch of a {}.") == ("literal", ["a sketch of a {}."])


def test_template_file_and_errors(tmp_path):
    good = tmp_path / "templates.txt"
    good.write_text("# my prompts\na photo of a {}.\n\nitap of a {}.\n")
    assert zeroshot.resolve_templates(str(good))[1] == ["a photo of a {}.", "itap of a {}."]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a thing.\n")
    with pytest.raises(ValueError, match="must each contain"):
        zeroshot.resolve_templates(str(bad))
    with pytest.raises(ValueError, match="neither a file nor a known set"):
        zeroshot.resolve_templates("no-such-set")


def test_class_prompts():
    prompts = zeroshot.class_prompts(["cat", "golden retriever"], ["a {}.", "itap of a {}."])
    assert prompts == [["a cat.", "itap of a cat."], ["a golden retriever.", "itap of a golden retriever."]]


def test_prompt_ensemble_normalises_then_averages_then_renormalises():
    vectors = {  # deliberately unnormalised: each prompt must count equally
        "a cat.": [3.0, 0.0], "art of a cat.": [0.0, 0.5],
        "a dog.": [0.0, -2.0], "art of a dog.": [0.0, -1.0],
    }  # fmt: skip

    def encode(texts):
        return np.array([vectors[t] for t in texts])

    weights = zeroshot.classifier_weights(encode, ["cat", "dog"], ["a {}.", "art of a {}."])
    # cat: mean([1, 0], [0, 1]) = [.5, .5] -> [.7071, .7071]; dog: [0, -1]
    np.testing.assert_allclose(weights, [[2**-0.5, 2**-0.5], [0.0, -1.0]], atol=1e-6)
    scores = zeroshot.zero_shot_scores(np.array([[1.0, 1.0], [0.1, -5.0]]), weights)
    assert scores.argmax(axis=1).tolist() == [0, 1]


def test_describe_prompts_records_everything():
    described = zeroshot.describe_prompts("animals", ["a photo of a {}, a type of animal."], ["dog"])
    assert described["example"] == "a photo of a dog, a type of animal."
    assert described["num_templates"] == 1 and described["class_names"] == ["dog"]


def test_informative_model_beats_chance_with_an_ensemble(tmp_path_factory):
    embedder = embedders.load_embedder(str(shared_colour_model(tmp_path_factory)), progress=False)
    rng = np.random.default_rng(5)
    names = list(COLOURS)
    labels = np.repeat(np.arange(len(names)), 4)
    images = [colour_image(names[label], rng) for label in labels]
    weights = zeroshot.classifier_weights(embedder.encode_texts, names, zeroshot.TEMPLATE_SETS["imagenet-7"])
    scores = zeroshot.zero_shot_scores(embedder.encode_images(images), weights)
    report = metrics.classification_report(labels, scores.argmax(1), names, scores)
    assert report["accuracy"] >= 0.9  # chance is 1/8
    assert report["top5_accuracy"] == 1.0
