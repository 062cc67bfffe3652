"""Training flags from the config dataclasses: one flag per field, its help, each preset's value and its range.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Mapping, Optional

from dual_encoder import config as run_config
from dual_encoder.config import Bounds, RunConfig, field_bounds, field_kind, flag_name
from dual_encoder.errors import InvalidArgumentError

_SECTIONS = run_config.SECTIONS  # model, data, train and finetune: one flag group each


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def preset_values(presets: dict[str, RunConfig], section: str, name: str) -> str:
    """Each preset's value of one field, for --help: "default: X" when they agree, else "reference: X; sample: Y"."""
    values = {preset: _shown(getattr(getattr(run, section), name)) for preset, run in presets.items()}
    if len(set(values.values())) == 1:
        return f"default: {next(iter(values.values()))}"
    return "; ".join(f"{preset}: {value}" for preset, value in values.items())


def range_help(bounds: Optional[Bounds]) -> str:
    """The range as --help shows it after the defaults: '; range [1, 65536]' (nothing for unbounded flags)."""
    return f"; range {bounds.interval()}" if bounds else ""


def bounded(kind: type, bounds: Bounds) -> Callable[[str], object]:
    """An argparse `type` that parses the text and refuses values outside `bounds`, so argparse
    names the flag ("argument --batch-size: must be an integer in [2, 2147483647], got 0")."""
    bounds = dataclasses.replace(bounds, optional=False)  # a flag given has a value; leaving it out is "unset"

    def parse(text: str):
        value = kind(text)  # a ValueError here: argparse's own "invalid int value: 'x'"
        problem = bounds.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__
    return parse


def check_flags(args: argparse.Namespace, bounds_by_dest: Mapping[str, Bounds]) -> None:
    """Refuses the first given flag outside its range, naming it (for CLIs that report errors themselves)."""
    for dest, bounds in bounds_by_dest.items():
        value = getattr(args, dest, None)  # a flag this parser lacks, or an optional one left out: nothing to check
        if value is None and (bounds.optional or not hasattr(args, dest)):
            continue
        problem = dataclasses.replace(bounds, optional=False).problem(value)
        if problem:
            raise InvalidArgumentError(f"{flag_name(dest)} {problem}")


def _help(f: dataclasses.Field, presets: dict[str, RunConfig], section: str) -> str:
    shown = preset_values(presets, section, f.name)
    agreed_and_said = shown.startswith("default:") and "default:" in f.metadata["help"]
    text = f.metadata["help"] if agreed_and_said else f"{f.metadata['help']} ({shown})"
    return text + range_help(field_bounds(f))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field; default None means "keep the preset's value"."""
    presets = {name: make() for name, make in run_config.PRESETS.items()}  # built once, not once per flag
    for section, cls in _SECTIONS.items():
        group = parser.add_argument_group(f"{section} options (override the preset)")
        for f in dataclasses.fields(cls):
            kind, _ = field_kind(f)
            help_text = _help(f, presets, section)
            if kind is bool:
                group.add_argument(flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                   help=help_text)
                continue
            bounds, choices = field_bounds(f), f.metadata.get("choices")
            group.add_argument(flag_name(f.name), dest=f.name, type=bounded(kind, bounds) if bounds else kind, default=None,
                               choices=choices, metavar=None if choices else f.metadata.get("metavar", f.name.upper()),
                               help=help_text)


def apply_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """The preset with every flag the user gave written over it; each assignment is checked
    (InvalidArgumentError naming the flag and its range). The rules between fields are checked
    by `config.validate()`, which `training.train` calls."""
    for section in _SECTIONS:
        part = getattr(config, section)
        for f in dataclasses.fields(part):
            value = getattr(args, f.name, None)
            if value is not None:
                setattr(part, f.name, value)
    return config
