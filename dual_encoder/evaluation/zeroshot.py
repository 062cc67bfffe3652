"""Zero-shot classification: prompt templates, class-name ensembles, classifier weights.

As in CLIP/open_clip, each class name is put into every template, the prompts are embedded,
averaged and re-normalised into one text embedding per class; an image is assigned the class
whose embedding has the highest cosine similarity. Prompts move zero-shot accuracy by several
points, so the templates used are always recorded in the report (`describe_prompts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from dual_encoder.errors import InvalidArgumentError
from dual_encoder.evaluation.retrieval import l2_normalize

PLACEHOLDER = "{}"

# The 80 ImageNet prompts from CLIP's "Prompt_Engineering_for_ImageNet" notebook.
CLIP_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.",
    "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.",
    "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.",
    "art of a {}.", "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.",
    "itap of the {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.", "a toy {}.",
    "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)  # fmt: skip

# Named template sets (`--templates NAME`). Small domain sets follow CLIP's per-dataset prompts.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "default": ("a photo of a {}.",),
    "imagenet": CLIP_IMAGENET_TEMPLATES,
    "imagenet-7": (  # CLIP's 7-prompt subset chosen on ImageNet
        "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
        "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
    ),
    "animals": (
        "a photo of a {}, a type of animal.", "a photo of the {}, a type of animal.",
        "a blurry photo of a {}, a type of animal.", "a close-up photo of a {}.",
        "a photo of a {} in the wild.",
    ),
    "objects": (
        "a photo of a {}.", "a blurry photo of a {}.", "a low contrast photo of a {}.",
        "a photo of the small {}.", "a photo of the big {}.",
    ),
    "food": ("a photo of {}, a type of food.",),
    "pets": ("a photo of a {}, a type of pet.",),
    "flowers": ("a photo of a {}, a type of flower.",),
    "satellite": ("a satellite photo of {}.", "a centered satellite photo of {}."),
}  # fmt: skip

# Which set `--templates auto` picks for a dataset (anything else gets "default").
DATASET_TEMPLATES = {
    "animals10": "animals",
    "tfds:cifar10": "objects",
    "tfds:cifar100": "objects",
    "tfds:food101": "food",
    "tfds:oxford_iiit_pet": "pets",
    "tfds:oxford_flowers102": "flowers",
    "tfds:eurosat": "satellite",
    "tfds:imagenet2012": "imagenet",
}


def _check(templates: Sequence[str], origin: str) -> list[str]:
    templates = [t for t in templates if t.strip()]
    bad = [t for t in templates if PLACEHOLDER not in t]
    if not templates or bad:
        raise InvalidArgumentError(
            f"templates from {origin} must each contain '{{}}' where the class name goes "
            f"(e.g. 'a photo of a {{}}.'); offending: {bad[:3] or 'none given'}"
        )
    return templates


def resolve_templates(spec: Union[str, Sequence[str], None] = None, dataset: Optional[str] = None) -> tuple[str, list[str]]:
    """(name, templates) for a set name, 'auto' (per dataset), a file, one literal template, or a
    list of templates (from Python).

    A template file has one template per line; blank lines and lines starting with '#' are
    ignored.
    """
    if isinstance(spec, (list, tuple)):
        return "list", _check([str(t).strip() for t in spec], "the template list")
    spec = spec or "default"
    if spec == "auto":
        spec = DATASET_TEMPLATES.get(dataset or "", "default")
    if spec in TEMPLATE_SETS:
        return spec, list(TEMPLATE_SETS[spec])
    if PLACEHOLDER in spec:
        return "literal", _check([spec], "the command line")
    path = Path(spec)
    if not path.is_file():
        raise InvalidArgumentError(
            f"--templates {spec!r} is neither a file nor a known set "
            f"({', '.join(['auto', *TEMPLATE_SETS])}) nor a template containing '{{}}'"
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return str(path), _check([line for line in lines if not line.startswith("#")], str(path))


def class_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Prompts per class, in template order."""
    return [[t.replace(PLACEHOLDER, name) for t in templates] for name in class_names]


def classifier_weights(
    encode_texts: Callable[[list[str]], np.ndarray],
    class_names: Sequence[str],
    templates: Sequence[str],
) -> np.ndarray:
    """[classes, D]: the re-normalised mean of each class's normalised prompt embeddings."""
    prompts = class_prompts(class_names, templates)
    flat = [p for per_class in prompts for p in per_class]
    embeddings = l2_normalize(encode_texts(flat)).reshape(len(class_names), len(templates), -1)
    return l2_normalize(embeddings.mean(axis=1))


def zero_shot_scores(image_embeddings: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Cosine similarity of each image to each class ([images, classes]); argmax predicts."""
    return l2_normalize(image_embeddings) @ weights.T


def describe_prompts(name: str, templates: Sequence[str], class_names: Sequence[str]) -> dict:
    """The prompt section of report.json: enough to reproduce the classifier exactly."""
    return {
        "template_set": name,
        "templates": list(templates),
        "num_templates": len(templates),
        "class_names": list(class_names),
        "ensembling": "mean of L2-normalised prompt embeddings, re-normalised",
        "example": class_prompts(class_names[:1], templates[:1])[0][0] if class_names else None,
    }
