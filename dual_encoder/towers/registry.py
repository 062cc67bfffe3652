"""A tower rebuilt from its spec, the JSON-able identity every tower records.
"""

from __future__ import annotations

from typing import Union

from dual_encoder.towers.clip import load_preset_pair
from dual_encoder.towers.image import ImageTower, build_image_tower
from dual_encoder.towers.text import TextTower, build_text_tower


def from_spec(spec: dict) -> Union[ImageTower, TextTower]:
    """Rebuilds the tower a spec describes (its build arguments are in `spec["build"]`; a tower of
    a CLIP / SigLIP checkpoint, `--init`, names it under `init`)."""
    if "init" in spec["build"]:
        pair = load_preset_pair(spec["build"]["init"], spec["build"]["pretrained"], spec["build"].get("sequence_length"))
        return pair.image if spec["kind"] == "image" else pair.text
    build = build_image_tower if spec["kind"] == "image" else build_text_tower
    return build(**spec["build"])
