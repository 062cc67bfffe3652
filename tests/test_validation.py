"""Every configuration value and numeric flag is checked where it is defined (issue 15).

A value out of range is refused at once with the flag's name and its range, whether it comes
from train.py, evaluate.py or `python -m dual_encoder.data`, from a constructor, or from a
notebook assigning a field later; nothing reaches TensorFlow or is silently ignored.
"""

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from dual_encoder import config as run_config
from dual_encoder.cli import flags
from dual_encoder.errors import InvalidArgumentError

INT32 = "2147483647"
SEED = "4294967295"
HUGE = {int: 2**63, float: 1e30}
SECTIONS = {"model": run_config.ModelConfig, "data": run_config.DataConfig, "train": run_config.TrainConfig}
# What a section needs around one field for that field to mean something (trainable layers of a trained tower).
CONTEXT = {"model": {"train_image_tower": True}, "data": {}, "train": {}}

# field -> (its range, and whether 0, -1 and a huge value are accepted); "validate": accepted by the
# field itself, refused by validate() together with another field.
EXPECTED = {
    "image_size": ("[1, 8192]", (False, False, False)),
    "sequence_length": ("[3, 8192]", (False, False, False)),
    "vocabulary_size": (f"[6, {INT32}]", (False, False, False)),
    "projection_dim": ("[1, 65536]", (False, False, False)),
    "dropout": ("[0, 1)", (True, False, False)),
    "feature_dropout": ("[0, 1)", (True, False, False)),
    "image_feature_stages": (f"[0, {INT32}]", (True, False, False)),
    "text_feature_layers": (f"[0, {INT32}]", (True, False, False)),
    "logit_scale": ("[0, 4.605]", (True, False, False)),
    "trainable_layers": (f"[0, {INT32}]", (True, False, False)),
    "class_prior_top_k": (f"[1, {INT32}]", (False, False, False)),
    "captions_per_image": (f"[1, {INT32}]", (False, False, False)),
    "val_fraction": ("[0, 1)", (True, False, False)),
    "split_seed": (f"[0, {SEED}]", (True, False, False)),
    "images_per_shard": (f"[1, {INT32}]", (False, False, False)),
    "max_side": (f"[1, {INT32}]", (False, False, False)),
    "shuffle_buffer": (f"[1, {INT32}]", (False, False, False)),
    "augment_views": ("[0, 64]", (True, False, False)),
    "augment_min_scale": ("(0, 1]", (False, False, False)),
    "batch_size": (f"[2, {INT32}]", (False, False, False)),
    "epochs": (f"[1, {INT32}]", (False, False, False)),
    "learning_rate": ("[0, 1]", (True, False, False)),
    "weight_decay": ("[0, inf)", (True, False, "validate")),
    "early_stopping_patience": (f"[0, {INT32}]", (True, False, False)),
    "reduce_lr_patience": (f"[0, {INT32}]", (True, False, False)),
    "reduce_lr_factor": ("(0, 1)", (False, False, False)),
    "seed": (f"[0, {SEED}]", (True, False, False)),
}


def flag_of(name: str) -> str:
    """The flag of a field, as the README promises: --batch-size for batch_size."""
    return "--" + name.replace("_", "-")


def numeric_fields():
    """(section, field, python type) of every int or float field, Optional ones included."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            kind = str(f.type).replace("Optional[", "").rstrip("]")
            if kind in ("int", "float"):
                yield section, f, {"int": int, "float": float}[kind]


def cases():
    for section, f, kind in numeric_fields():
        interval, accepted = EXPECTED[f.name]
        for value, ok in zip((kind(0), kind(-1), HUGE[kind]), accepted):
            yield pytest.param(section, f.name, value, ok, interval, id=f"{f.name}={value:g}")


def test_every_numeric_field_has_its_range_beside_it():
    """The table covers every numeric field, and each field's metadata holds exactly that range."""
    assert sorted(f.name for _, f, _ in numeric_fields()) == sorted(EXPECTED)
    assert {f.name: run_config.field_bounds(f).interval() for _, f, _ in numeric_fields()} == {
        name: interval for name, (interval, _) in EXPECTED.items()}


def _refusal(error: InvalidArgumentError, name: str, interval: str) -> None:
    message = str(error)
    assert flag_of(name) in message and interval in message, message


@pytest.mark.parametrize("section, name, value, ok, interval", cases())
def test_every_numeric_field_at_0_minus_1_and_huge(section, name, value, ok, interval):
    """At construction and when assigned later (`run.train.epochs = 0` in a notebook), the same verdict."""
    cls, context = SECTIONS[section], CONTEXT[section]
    if ok is False:
        with pytest.raises(InvalidArgumentError) as constructed:
            cls(**context, **{name: value})
        _refusal(constructed.value, name, interval)
        config = cls(**context)
        before = getattr(config, name)
        with pytest.raises(InvalidArgumentError) as assigned:
            setattr(config, name, value)
        _refusal(assigned.value, name, interval)
        assert getattr(config, name) == before  # a refused value is not kept
        return
    config = cls(**context, **{name: value})
    assert getattr(config, name) == value
    if ok == "validate":
        with pytest.raises(InvalidArgumentError, match=f"{flag_of(name)}.*--learning-rate"):
            config.validate()
    else:
        assert config.validate() is config


@pytest.mark.parametrize("section, name, value, ok, interval", cases())
def test_every_train_flag_at_0_minus_1_and_huge(section, name, value, ok, interval, capsys):
    """train.py's flags: argparse names the flag and its range, exit 2, before anything runs."""
    parser = argparse.ArgumentParser(prog="train.py")
    flags.add_config_arguments(parser)
    flag = flag_of(name)
    if ok is False:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([flag, str(value)])
        err = capsys.readouterr().err
        assert done.value.code == 2 and f"argument {flag}: must be " in err and interval in err, err
        return
    config = flags.apply_overrides(run_config.get_preset("sample"), parser.parse_args([flag, str(value)]))
    assert getattr(getattr(config, section), name) == value


def test_non_numbers_nan_and_infinity_are_refused_everywhere():
    for section, f, kind in numeric_fields():
        cls = SECTIONS[section]
        bad = ["3", True, None] if kind is int else ["0.5", True, None, math.nan, math.inf, -math.inf]
        if kind is int:
            bad.append(2.0)  # a float where TensorFlow wants an int
        for value in bad:
            if value is None and str(f.type).startswith("Optional["):
                continue
            with pytest.raises(InvalidArgumentError, match=flag_of(f.name)):
                cls(**{f.name: value})


def test_numpy_numbers_are_stored_as_plain_python_numbers():
    """Values from numpy (a sweep in a notebook) are accepted and stored JSON-ready."""
    train = run_config.TrainConfig(epochs=np.int64(3), learning_rate=np.float32(0.5))
    assert type(train.epochs) is int and type(train.learning_rate) is float and train.epochs == 3


def test_strings_and_switches_are_checked_too():
    with pytest.raises(InvalidArgumentError, match=r"--head .*one of mlp, linear, got 'MLP'"):
        run_config.ModelConfig(head="MLP")
    with pytest.raises(InvalidArgumentError, match="--strategy"):
        run_config.TrainConfig().strategy = "tpu"
    with pytest.raises(InvalidArgumentError, match="--mixed-precision .*mixed_float16"):
        run_config.TrainConfig(mixed_precision="mixed_float8")
    with pytest.raises(InvalidArgumentError, match="--pretrained .*True or False"):
        run_config.ModelConfig(pretrained="no")  # a truthy string would have meant "yes"
    with pytest.raises(InvalidArgumentError, match="--image-encoder .*non-empty string"):
        run_config.ModelConfig(image_encoder=42)
    assert run_config.ModelConfig(image_encoder=Path("towers/mine")).image_encoder == "towers/mine"


def test_rules_between_fields_are_checked_by_validate():
    run = run_config.get_preset("reference")
    run.model.trainable_layers = 2  # both towers frozen: it would change nothing
    with pytest.raises(InvalidArgumentError, match="--trainable-layers 2 needs --train-image-tower"):
        run.validate()
    run.model.train_text_tower = True
    run.train.learning_rate, run.train.weight_decay = 0.5, 2.0  # AdamW would zero every weight each step
    with pytest.raises(InvalidArgumentError, match=r"--weight-decay 2 with --learning-rate 0.5.*\[0, 2\)"):
        run.validate()
    run.train.weight_decay = 1.5
    assert run.validate() is run


def test_a_run_config_holds_only_its_sections():
    with pytest.raises(InvalidArgumentError, match="RunConfig.train must be a TrainConfig, got dict"):
        run_config.RunConfig(train={"epochs": 2})
    run = run_config.get_preset("sample")
    with pytest.raises(InvalidArgumentError, match="RunConfig.model must be a ModelConfig"):
        run.model = None


@pytest.mark.parametrize("name", sorted(run_config.PRESETS))
def test_every_preset_is_valid(name):
    assert run_config.get_preset(name).validate().preset == name


def test_apply_overrides_checks_values_that_bypass_argparse():
    args = argparse.Namespace(epochs=0)
    with pytest.raises(InvalidArgumentError, match=r"--epochs .*\[1, "):
        flags.apply_overrides(run_config.get_preset("sample"), args)


def test_help_shows_each_range_once():
    one_line = lambda prog: argparse.HelpFormatter(prog, width=10_000, max_help_position=10_000)  # noqa: E731
    parser = argparse.ArgumentParser(formatter_class=one_line)
    flags.add_config_arguments(parser)
    text = parser.format_help()
    for name, (interval, _) in EXPECTED.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(flag_of(name) + " "))
        assert line.count(f"range {interval}") == 1, line


def _evaluate(argv, tmp_path):
    from dual_encoder.cli import evaluate

    return evaluate.main([*argv, "--cache-dir", str(tmp_path / "cache"), "--quiet"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "0"], f"--batch-size must be an integer in [1, {INT32}], got 0"),
        (["--batch-size", "-1"], f"--batch-size must be an integer in [1, {INT32}], got -1"),
        (["--image-size", "-5"], "--image-size must be an integer in [1, 8192], got -5"),
        (["--image-size", "0"], "--image-size must be an integer in [1, 8192], got 0"),  # was ignored: 0 is falsy
        (["--similarity-n", "0"], f"--similarity-n must be an integer in [1, {INT32}], got 0"),
        (["--probe-steps", "-3"], f"--probe-steps must be an integer in [1, {INT32}], got -3"),
    ],
)
def test_evaluate_flags_out_of_range(argv, message, tmp_path, capsys):
    """Refused before the model or the data loads: --model names nothing that exists."""
    assert _evaluate(["--model", str(tmp_path / "no_model"), "--sample", *argv], tmp_path) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {message}"


@pytest.mark.parametrize("value", ["0", "-1", str(2**63)])
def test_evaluate_search_top_k_out_of_range(value, tmp_path, capsys):
    argv = ["search", "a red thing", "--images", str(tmp_path), "--model", str(tmp_path / "no_model"), "--top-k", value]
    assert _evaluate(argv, tmp_path) == 2
    assert f"error: --top-k must be an integer in [1, {INT32}], got {value}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-1"], f"--seed must be an integer in [0, {SEED}], got -1"),
        (["--seed", str(2**40)], f"--seed must be an integer in [0, {SEED}], got {2**40}"),
        (["--val-fraction", "1.5"], "--val-fraction must be a number in [0, 1), got 1.5"),
        (["--val-fraction", "-0.1"], "--val-fraction must be a number in [0, 1), got -0.1"),
        (["--images-per-shard", "0"], f"--images-per-shard must be an integer in [1, {INT32}], got 0"),
        (["--max-side", "-1"], f"--max-side must be an integer in [1, {INT32}], got -1"),
    ],
)
def test_data_flags_out_of_range(argv, message, tmp_path, capsys):
    from dual_encoder.cli import data

    out = tmp_path / "out"
    assert data.main(["--sample", "--sample-images", "4", "--out", str(out), "--quiet", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not out.exists()  # refused before anything was read or written


def test_the_data_tool_and_train_py_share_the_split_ranges():
    from dual_encoder.cli import data

    assert data.FLAG_BOUNDS["seed"] == run_config.bounds_of(run_config.DataConfig, "split_seed")
    assert data.FLAG_BOUNDS["val_fraction"].interval() == EXPECTED["val_fraction"][0]
