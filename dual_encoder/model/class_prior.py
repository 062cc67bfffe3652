"""Class prior (ConSE): the image tower's own ImageNet classifier as a bridge into text space.

Heads trained on a few thousand captions learn only the concepts those captions name; a
zero-shot prompt for anything else ("a photo of a spider") lands where the heads were never
trained. The pretrained image checkpoint already knows 1,000 ImageNet classes, and the text
tower knows their names. ConSE (Norouzi et al., "Zero-Shot Learning by Convex Combination of
Semantic Embeddings", ICLR 2014) maps an image to the probability-weighted mean of the text
embeddings of its top-k predicted class names. `DualEncoder` adds that vector, projected by the
*text* head, to the image head's output (which starts switched off), so training refines a
mapping that already points at the right words instead of learning one from nothing.

Measured on ../shared (EfficientNet-Lite0 + all-MiniLM-L6-v2, no training at all): ConSE top-10
alone classifies animals10_proxy zero-shot at 79 % (chance 10 %).
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from dual_encoder.errors import DualEncoderError, InvalidArgumentError

TEMPLATE = "a photo of a {}."
TOP_K = 10  # as in the ConSE paper
IMAGENET_CLASSES = 1000

_SERIALIZABLE = "dual_encoder"


class ClassPriorUnavailable(DualEncoderError, ValueError):
    """The image tower has no usable ImageNet classifier for the class prior."""


@keras.saving.register_keras_serializable(package=_SERIALIZABLE)
class ClassPrior(keras.layers.Layer):
    """Image features -> classifier logits -> softmax over the top-k classes -> the weighted mean
    of those classes' text features. All weights are frozen (they come from the two towers)."""

    def __init__(self, num_classes: int, text_dim: int, top_k: int = TOP_K, template: str = TEMPLATE, **kwargs):
        kwargs.setdefault("dtype", "float32")  # top-k and softmax in float32 under mixed precision too
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        if not 1 <= top_k <= num_classes:
            raise InvalidArgumentError(f"class prior top_k must be in 1..{num_classes}, got {top_k}")
        self.num_classes, self.text_dim, self.top_k, self.template = num_classes, text_dim, top_k, template

    def build(self, input_shape):
        features = int(input_shape[-1])
        self.kernel = self.add_weight(name="classifier_kernel", shape=(features, self.num_classes), initializer="zeros",
                                      trainable=False)
        self.bias = self.add_weight(name="classifier_bias", shape=(self.num_classes,), initializer="zeros", trainable=False)
        self.class_text = self.add_weight(name="class_text_features", shape=(self.num_classes, self.text_dim),
                                          initializer="zeros", trainable=False)

    def logits(self, features):
        return tf.matmul(tf.cast(features, tf.float32), self.kernel) + self.bias

    def call(self, features):
        top, classes = tf.math.top_k(self.logits(features), k=self.top_k)
        weights = tf.nn.softmax(top, axis=-1)
        return tf.einsum("bk,bkd->bd", weights, tf.gather(self.class_text, classes))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.text_dim)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "text_dim": self.text_dim, "top_k": self.top_k,
                "template": self.template}


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in index order, readable ("German shepherd")."""
    import keras_hub

    return [keras_hub.utils.imagenet_id_to_name(i).replace("_", " ") for i in range(IMAGENET_CLASSES)]


def image_classifier_head(image_encoder: str) -> tuple[np.ndarray, np.ndarray]:
    """(kernel [features, 1000], bias [1000]) of the ImageNet classifier saved with a keras-hub
    image preset, i.e. the layer its `ImageClassifier` puts after the pooled backbone features
    (which are exactly the image tower's features)."""
    import keras_hub

    from dual_encoder.towers import loading

    instead = ("an image tower given as a keras-hub ImageClassifier preset with its ImageNet-1k head (e.g. "
               "../shared/weights/efficientnet_lite0_keras), or --no-class-prior")
    if not loading.is_hub(image_encoder, keras_hub.models.ImageClassifier):
        raise ClassPriorUnavailable(f"--class-prior needs {instead}; {image_encoder!r} is not a keras-hub preset")
    with loading.downloading(image_encoder, f"the ImageNet classifier of {image_encoder!r}", instead):
        try:
            classifier = keras_hub.models.ImageClassifier.from_preset(image_encoder, preprocessor=None)
        except (FileNotFoundError, ValueError, TypeError) as exc:  # TypeError: a backbone-only preset
            raise ClassPriorUnavailable(f"{image_encoder!r} holds no ImageClassifier task ({exc}); --class-prior needs "
                                        f"{instead}") from None
    dense = getattr(classifier, "output_dense", None)
    plain = getattr(classifier, "pooling", "avg") == "avg" and getattr(classifier, "activation", None) in (None, "linear")
    if dense is None or not plain:
        raise ClassPriorUnavailable(f"the classifier of {image_encoder!r} is not a Dense layer on average-pooled "
                                    f"features; --class-prior needs {instead}")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in dense.weights[:2])
    if kernel.shape[-1] != IMAGENET_CLASSES:
        raise ClassPriorUnavailable(f"the classifier of {image_encoder!r} has {kernel.shape[-1]} classes, not ImageNet's "
                                    f"{IMAGENET_CLASSES} (the class prior names classes by their ImageNet names)")
    return kernel, bias


def embed_class_names(text_tower, names: Sequence[str], template: str = TEMPLATE) -> np.ndarray:
    """Text-tower features of `template` filled with each name (frozen tower: computed once, by
    length bucket as the feature cache computes captions)."""
    from dual_encoder.towers.features import TextFeatures

    return TextFeatures(text_tower)([template.format(name) for name in names])


def build_class_prior(image_encoder: str, image_feature_dim: int, text_tower, top_k: int = TOP_K,
                      class_names: Optional[Sequence[str]] = None, head=None,
                      pooled_dim: Optional[int] = None) -> ClassPrior:
    """The prior for an image tower (by the name it was built from) and a built text tower.
    `head`: (kernel, bias) to use instead of reading the preset's classifier (tests).
    `pooled_dim`: the tower's leading features the classifier reads, when more follow (its
    `--image-feature-stages`); the classifier's kernel gets zero rows for the others."""
    kernel, bias = head if head is not None else image_classifier_head(image_encoder)
    if pooled_dim is not None and pooled_dim != image_feature_dim and kernel.shape[0] == pooled_dim:
        kernel = np.concatenate([kernel, np.zeros((image_feature_dim - pooled_dim, kernel.shape[1]), kernel.dtype)])
    if kernel.shape[0] != image_feature_dim:
        raise ClassPriorUnavailable(f"the classifier of {image_encoder!r} reads {kernel.shape[0]} features but the image "
                                    f"tower gives {image_feature_dim}")
    names = list(class_names) if class_names is not None else imagenet_class_names()
    text = embed_class_names(text_tower, names)
    prior = ClassPrior(len(names), text.shape[-1], top_k=top_k, name="class_prior")
    prior.build((None, image_feature_dim))
    prior.set_weights([kernel, bias, text])
    return prior
