"""Training flags from the config dataclasses: one flag per field, its help and each preset's value.
"""

from __future__ import annotations

import argparse
import dataclasses

from dual_encoder.config import PRESETS, DataConfig, ModelConfig, RunConfig, TrainConfig

_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def preset_values(presets: dict[str, RunConfig], section: str, name: str) -> str:
    """Each preset's value of one field, for --help: "default: X" when they agree, else "reference: X; sample: Y"."""
    values = {preset: _shown(getattr(getattr(run, section), name)) for preset, run in presets.items()}
    if len(set(values.values())) == 1:
        return f"default: {next(iter(values.values()))}"
    return "; ".join(f"{preset}: {value}" for preset, value in values.items())


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field; default None means "keep the preset's value"."""
    presets = {name: make() for name, make in PRESETS.items()}  # built once, not once per flag
    for section, cls in _SECTIONS.items():
        group = parser.add_argument_group(f"{section} options (override the preset)")
        for f in dataclasses.fields(cls):
            shown = preset_values(presets, section, f.name)
            agreed_and_said = shown.startswith("default:") and "default:" in f.metadata["help"]
            help_text = f.metadata["help"] if agreed_and_said else f"{f.metadata['help']} ({shown})"
            if f.type in ("bool", bool):
                group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                   help=help_text)
            else:
                kind = {"int": int, "float": float, "str": str}.get(str(f.type).replace("Optional[", "").rstrip("]"), str)
                choices = f.metadata.get("choices")
                group.add_argument(_flag(f.name), dest=f.name, type=kind, default=None, choices=choices,
                                   metavar=None if choices else f.name.upper(), help=help_text)


def apply_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """The preset with every flag the user gave written over it."""
    for section in _SECTIONS:
        part = getattr(config, section)
        for f in dataclasses.fields(part):
            value = getattr(args, f.name, None)
            if value is not None:
                setattr(part, f.name, value)
    return config
