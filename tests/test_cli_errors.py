"""The CLIs print our errors as one line (exit 2) and let a genuine bug keep its traceback."""

import pytest

from dual_encoder import errors


def bug(*args, **kwargs):
    raise ZeroDivisionError("a bug in our code")


def refusal(*args, **kwargs):
    raise errors.InvalidArgumentError("--flag 7: out of range")


def train_cli(monkeypatch, tmp_path, raise_it):
    from dual_encoder.cli import train
    from dual_encoder.training import trainer

    monkeypatch.setattr(trainer, "train", raise_it)
    monkeypatch.setattr(train, "prepare_shards", lambda args, config: [str(tmp_path)])
    return train.main, ["--tfrecords", str(tmp_path), "--output-dir", str(tmp_path / "run")]


def evaluate_cli(monkeypatch, tmp_path, raise_it):
    from dual_encoder.cli import evaluate

    monkeypatch.setattr(evaluate, "run_retrieval", raise_it)
    return evaluate.main, ["--model", str(tmp_path), "--sample"]


def data_cli(monkeypatch, tmp_path, raise_it):
    from dual_encoder.cli import data

    monkeypatch.setattr(data, "write_shards", raise_it)
    return data.main, ["--sample", "--sample-images", "4", "--out", str(tmp_path / "out"), "--quiet"]


@pytest.mark.parametrize("cli", [train_cli, evaluate_cli, data_cli])
def test_our_error_is_one_line_and_exit_2(cli, monkeypatch, tmp_path, capsys):
    main, argv = cli(monkeypatch, tmp_path, refusal)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == "error: --flag 7: out of range"


@pytest.mark.parametrize("cli", [train_cli, evaluate_cli, data_cli])
def test_a_bug_keeps_its_traceback(cli, monkeypatch, tmp_path):
    main, argv = cli(monkeypatch, tmp_path, bug)
    with pytest.raises(ZeroDivisionError):
        main(argv)


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
