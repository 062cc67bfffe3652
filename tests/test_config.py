"""Run configuration: presets, flags that override them, and --help that shows each preset's value."""

import argparse
from pathlib import Path

import pytest

from dual_encoder import config as run_config
from dual_encoder.cli import flags


def _parser():
    parser = argparse.ArgumentParser(formatter_class=lambda prog: argparse.HelpFormatter(prog, width=10_000))  # no wrapping
    flags.add_config_arguments(parser)
    return parser


def test_help_shows_every_presets_value_where_they_differ():
    text = _parser().format_help()
    assert "(reference: 256; sample: 64; lit-small: 128; lit: 512)" in text  # --batch-size
    assert "(reference: 0.001; sample: 0.002; lit-small: 0.01; lit: 0.003)" in text  # --learning-rate
    assert "(reference: 2.659; sample: 2.659; lit-small: 2.485; lit: 2.773)" in text  # floats short, not 2.659260036932778
    assert "(reference: 0; sample: 0; lit-small: 0; lit: 0.3)" in text  # --feature-dropout
    assert "(reference: 0; sample: 0; lit-small: 0; lit: 4)" in text  # --image-feature-stages
    assert "AdamW weight decay (never applied to the temperature, biases or norms) (default: 0.001)" in text
    assert "token counts) (default" not in text  # a default the help already names (--sequence-length) is not repeated


def test_flags_override_only_what_was_given():
    args = _parser().parse_args(["--batch-size", "32", "--no-class-prior", "--split-seed", "7"])
    config = flags.apply_overrides(run_config.get_preset("lit-small"), args)
    assert (config.train.batch_size, config.model.class_prior, config.data.split_seed) == (32, False, 7)
    assert config.train.learning_rate == run_config.get_preset("lit-small").train.learning_rate
    with pytest.raises(ValueError, match="lit-small"):
        run_config.get_preset("lit_small")


@pytest.mark.parametrize("preset", ["lit-small", "lit"])
def test_lit_presets_find_the_shared_towers_from_another_working_directory(tmp_path, monkeypatch, preset):
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "weights"
    if not shared.is_dir():
        pytest.skip("../shared is absent")
    monkeypatch.chdir(tmp_path)  # a notebook in some other folder
    model = run_config.get_preset(preset).model
    assert Path(model.image_encoder) == (shared / "efficientnet_lite0_keras").resolve() and Path(model.text_encoder).is_dir()
