"""The CLIs print our errors as one line (exit 2) and let a genuine bug keep its traceback."""

import pytest

from dual_encoder import errors


def bug(*args, **kwargs):
    raise ZeroDivisionError("a bug in our code")


def refusal(*args, **kwargs):
    raise errors.InvalidArgumentError("--flag 7: out of range")


@pytest.mark.parametrize("raise_it, expected", [(refusal, 2), (bug, ZeroDivisionError)])
def test_train_cli(monkeypatch, tmp_path, capsys, raise_it, expected):
    from dual_encoder.cli import train as train_script
    from dual_encoder.training import trainer

    monkeypatch.setattr(trainer, "train", raise_it)
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
    from dual_encoder.cli import evaluate as evaluate_script

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
    from dual_encoder.cli import data as data_cli

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

    from dual_encoder import _compat
    from dual_encoder.cli import sources
    from dual_encoder.data import collect, images, tfds_source, tfrecords
    from dual_encoder.evaluation import datasets, embedders, runs
    from dual_encoder.model import class_prior
    from dual_encoder.towers import loading
    from dual_encoder.training import feature_cache, trainer

    modules = (_compat, class_prior, embedders, runs, feature_cache, loading, trainer, collect, datasets, images,
               sources, tfds_source, tfrecords, errors)
    ours = {cls for module in modules for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__}
    assert len(ours) >= 18
    assert [cls for cls in ours if not issubclass(cls, errors.DualEncoderError)] == []
    assert issubclass(tfrecords.ConfigMismatchError, ValueError)
    assert issubclass(loading.PretrainedWeightsUnavailable, RuntimeError)
