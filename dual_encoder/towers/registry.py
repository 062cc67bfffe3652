"""A tower rebuilt from its spec, the JSON-able identity every tower records.
"""

from __future__ import annotations

from typing import Union

from dual_encoder.towers.image import ImageTower, build_image_tower
from dual_encoder.towers.text import TextTower, build_text_tower


def from_spec(spec: dict) -> Union[ImageTower, TextTower]:
    """Rebuilds the tower a spec describes (its build arguments are in `spec["build"]`)."""
    build = build_image_tower if spec["kind"] == "image" else build_text_tower
    return build(**spec["build"])
