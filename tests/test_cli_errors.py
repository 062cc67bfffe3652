"""The CLIs print our errors as one line (exit 2) and let a genuine bug keep its traceback."""

import importlib.util
from pathlib import Path

import pytest

from dual_encoder import errors

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bug(*args, **kwargs):
    raise ZeroDivisionError("a bug in our code")


def refusal(*args, **kwargs):
    raise errors.InvalidArgumentError("--flag 7: out of range")


@pytest.mark.parametrize("raise_it, expected", [(refusal, 2), (bug, ZeroDivisionError)])
def test_train_cli(monkeypatch, tmp_path, capsys, raise_it, expected):
    from dual_encoder import training

    train_script = load_script("train")
    monkeypatch.setattr(training, "train", raise_it)
    monkeypatch.setattr(train_script, "prepare_shards", lambda args, config: [str(tmp_path)])
    argv = ["--tfrecords", str(tmp_path), "--output-dir", str(tmp_path / "run")]
    if expected is ZeroDivisionError:
        with pytest.raises(ZeroDivisionError):
            train_script.main(argv)
    else:
        assert train_script.main(argv) == 2
        assert capsys.readouterr().err.strip() == "error: --flag 7: out of range"


@pytest.mark.parametrize("raise_it, expected", [(refusal, 2), (bug, ZeroDivisionError)])
def test_evaluate_cli(monkeypatch, tmp_path, capsys, raise_it, expected):
    evaluate_script = load_script("evaluate")
    monkeypatch.setattr(evaluate_script, "run_retrieval", raise_it)
    argv = ["--model", str(tmp_path), "--sample"]
    if expected is ZeroDivisionError:
        with pytest.raises(ZeroDivisionError):
            evaluate_script.main(argv)
    else:
        assert evaluate_script.main(argv) == 2
        assert capsys.readouterr().err.strip() == "error: --flag 7: out of range"


@pytest.mark.parametrize("raise_it, expected", [(refusal, 2), (bug, ZeroDivisionError)])
def test_data_cli(monkeypatch, tmp_path, capsys, raise_it, expected):
    from dual_encoder.data import __main__ as data_cli

    monkeypatch.setattr(data_cli, "write_shards", raise_it)
    argv = ["--sample", "--sample-images", "4", "--out", str(tmp_path / "out"), "--quiet"]
    if expected is ZeroDivisionError:
        with pytest.raises(ZeroDivisionError):
            data_cli.main(argv)
    else:
        assert data_cli.main(argv) == 2
        assert capsys.readouterr().err.strip() == "error: --flag 7: out of range"


def test_every_error_we_raise_on_purpose_has_the_one_base():
    import inspect

    from dual_encoder import _compat, class_prior, embedders, evaluation, feature_cache, towers, training
    from dual_encoder.data import collect, folders, images, sources, tfds_source, tfrecords

    modules = (_compat, class_prior, embedders, evaluation, feature_cache, towers, training, collect, folders, images,
               sources, tfds_source, tfrecords, errors)
    ours = {cls for module in modules for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__}
    assert len(ours) >= 18
    assert [cls for cls in ours if not issubclass(cls, errors.DualEncoderError)] == []
    assert issubclass(tfrecords.ConfigMismatchError, ValueError) and issubclass(towers.PretrainedWeightsUnavailable, RuntimeError)
