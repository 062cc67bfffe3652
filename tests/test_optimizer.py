"""Weight decay by role: which variables AdamW decays for the reference and lit-small recipes."""

import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import config as run_config
from dual_encoder import towers, training
from dual_encoder.testing import SHARED

CAPTIONS = ["a red circle", "two blue squares", "three green triangles on the left", "a white diamond"]


def decayed_by_one_step(config, model) -> list[str]:
    """Paths of the variables one AdamW step with zero gradients moves. With no gradient Adam's
    own update is 0, so only weight decay changes a weight (every weight starts at 1, so a
    decayed one visibly shrinks)."""
    optimizer = training.make_optimizer(config, model)
    variables = model.trainable_variables
    for variable in variables:
        variable.assign(np.ones(variable.shape, variable.dtype))
    optimizer.apply([tf.zeros_like(v) for v in variables], variables)
    return sorted(v.path for v in variables if not np.all(v.numpy() == 1.0))


def reference_model(train_image_tower: bool = False):
    """The reference recipe's heads, temperature and image tower architecture (Xception, random
    weights: nothing to download); a tiny text tower stands in for BERT base, frozen as in the recipe."""
    config = run_config.get_preset("reference")
    config.model.train_image_tower = train_image_tower
    image = towers.build_image_tower("xception", weights=None, image_size=71)
    text = towers.build_text_tower("tiny", sequence_length=8, vocabulary=towers.build_vocabulary(CAPTIONS * 10, size=50))
    towers.freeze(image.model, train_image_tower)
    towers.freeze(text.model, False)
    return config, training.build_model(config, image, text)


def test_reference_recipe_decays_the_head_matrices_only():
    config, model = reference_model()
    trainable = sorted(v.path for v in model.trainable_variables)
    assert len(trainable) == 13  # per head: 2 kernels, 2 biases, norm gamma and beta; the temperature
    assert decayed_by_one_step(config, model) == [
        "image_head/hidden/kernel", "image_head/project/kernel", "text_head/hidden/kernel", "text_head/project/kernel",
    ]


def test_a_fine_tuned_tower_decays_its_kernels_and_never_its_norms_or_biases():
    config, model = reference_model(train_image_tower=True)
    decayed = decayed_by_one_step(config, model)
    tower = [v for v in model.image_encoder.trainable_variables]
    kernels = [v.path for v in tower if v.path.endswith("kernel")]  # conv, depthwise and pointwise kernels
    norms_and_biases = [v.path for v in tower if v.path.endswith(("gamma", "beta", "bias"))]
    assert len(kernels) == 74 and set(kernels) <= set(decayed)
    assert norms_and_biases and not set(norms_and_biases) & set(decayed)
    assert not [p for p in decayed if p.endswith(("gamma", "beta", "bias", "logit_scale"))]
    assert all(len(v.shape) >= 2 for v in model.trainable_variables if v.path in decayed)


SHARED_IMAGE = SHARED / "weights" / "efficientnet_lite0_keras"


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_IMAGE.is_dir(), reason="../shared/weights absent")
def test_lit_small_decays_its_linear_head_kernels_but_not_the_gate():
    config = run_config.get_preset("lit-small")
    image, text, _ = training.build_towers(config, CAPTIONS)
    model = training.build_model(config, image, text)
    trainable = sorted(v.path for v in model.trainable_variables)
    assert model.image_head_gate.path in trainable and model.logit_scale.path not in trainable  # a fixed scale
    assert decayed_by_one_step(config, model) == ["image_head/project/kernel", "text_head/project/kernel"]
