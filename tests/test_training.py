"""Training end to end on the learnable sample: loss falls, recall beats chance, resume, NaN guard."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dual_encoder import training
from dual_encoder.data.records import SkipCounter
from dual_encoder.data.sample import sample_records
from dual_encoder.data.tfrecords import write_shards
from dual_encoder.model import losses
from dual_encoder.testing import tiny_config
from dual_encoder.training import trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(shard_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    return training.train(tiny_config(epochs=5), [shard_dir], output, verbose=0), output


def test_loss_falls_and_validation_recall_beats_chance(trained):
    results, output = trained
    log = training.read_log(output / "log.csv")
    assert len(log["loss"]) == 5
    assert log["loss"][-1] < 0.8 * log["loss"][0]
    assert log["val_loss"][-1] < log["val_loss"][0]
    retrieval = results["retrieval"]
    assert retrieval["split"] == "val" and retrieval["num_images"] == 150
    chance_r5 = 5 / retrieval["num_images"]
    assert retrieval["text_to_image"]["R@5"] > 3 * chance_r5
    assert retrieval["image_to_text"]["R@5"] > 3 * chance_r5


def test_run_folder_has_every_output(trained):
    results, output = trained
    for name in ("results.json", "curves.png", "log.csv", "model.keras", "config.json", "saved_model/saved_model.pb",
                 "checkpoints/best.weights.h5"):
        assert (output / name).exists(), name
    saved = json.loads((output / "results.json").read_text())
    assert saved["config"]["preset"] == "sample"
    assert saved["sequence_length"]["chosen"] >= 8
    assert saved["data"]["manifests"]
    assert saved["timings"]["fit_seconds"] > 0


def test_other_settings_or_data_in_the_same_folder_are_refused(trained, shard_dir, tmp_path):
    _, output = trained
    (output / "backup").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match="train.learning_rate"):
        training.train(tiny_config(epochs=5, learning_rate=0.5), [shard_dir], output, verbose=0)
    other = tmp_path / "other_shards"
    write_shards(sample_records(num_images=40, image_size=48, seed=6), str(other), source_info={"type": "sample"},
                 skipped=SkipCounter(), val_fraction=0.25, seed=0, progress=False)
    log_before = (output / "log.csv").read_text()
    with pytest.raises(ValueError, match="the training data"):  # resuming on other data would mix two runs
        training.train(tiny_config(epochs=6), [str(other)], output, verbose=0)
    assert (output / "log.csv").read_text() == log_before


def test_each_call_trains_with_its_own_dtype_policy(monkeypatch, tmp_path):
    """A notebook that trains a mixed-precision run and then a float32 one gets exactly that."""
    import keras

    seen = []
    monkeypatch.setattr(trainer, "_train", lambda config, dirs, *rest: seen.append((keras.config.dtype_policy().name, dirs)))
    mixed = tiny_config()
    mixed.train.mixed_precision = "mixed_bfloat16"
    training.train(mixed, "one_folder", tmp_path)
    training.train(tiny_config(), [tmp_path], tmp_path)
    assert seen == [("mixed_bfloat16", ["one_folder"]), ("float32", [str(tmp_path)])]  # a folder, not its letters
    assert keras.config.dtype_policy().name == "float32"


def test_non_finite_loss_stops_with_a_clear_message(shard_dir, tmp_path, monkeypatch):
    def nan_loss(*args, **kwargs):
        loss, a, b = losses.infonce(*args, **kwargs)
        return loss * float("nan"), a, b

    monkeypatch.setitem(losses.LOSSES, "infonce", nan_loss)
    with pytest.raises(training.TrainingDiverged, match="epoch 1, batch 1"):
        training.train(tiny_config(epochs=2), [shard_dir], tmp_path, verbose=0)


def _train_cli(shard_dir, output, epochs):
    return [sys.executable, str(REPO / "train.py"), "--tfrecords", shard_dir, "--preset", "sample", "--output-dir", str(output),
            "--epochs", str(epochs), "--image-size", "48", "--batch-size", "32", "--projection-dim", "32",
            "--no-export", "--quiet"]


@pytest.mark.slow
def test_resume_after_kill_9_continues_from_the_last_epoch(shard_dir, tmp_path):
    output = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(_train_cli(shard_dir, output, 30), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = output / "log.csv"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(training.read_log(log)["loss"])
    assert done_before >= 2
    finished = subprocess.run(_train_cli(shard_dir, output, done_before + 1), env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    history = training.read_log(log)
    assert len(history["loss"]) == done_before + 1  # one more epoch, not a restart
    rows = [line.split(",")[0] for line in log.read_text().splitlines()[1:]]
    assert rows[-1] == str(done_before)  # epochs are 0-based in the CSV: the run continued
    # optimizer state came back too: the step counter kept counting from the killed run
    results = json.loads((output / "results.json").read_text())
    assert results["epochs_run"] == done_before + 1
    assert (output / "backup" / "callback_state.json").exists()  # early stopping's counters came back too
    assert f"Trained {done_before + 1} epochs (1 epoch in this call, resumed from the backup)" in finished.stdout
    again = subprocess.run(_train_cli(shard_dir, output, done_before + 1), env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "Nothing left to train" in again.stdout, again.stdout[-2000:]
    assert len(training.read_log(log)["loss"]) == done_before + 1


def test_callback_counters_survive_a_resume(tmp_path):
    """EarlyStopping / ReduceLROnPlateau / best-only ModelCheckpoint reset themselves when training
    begins; the state backup must put their counters back, or a resumed run waits its patience
    anew and overwrites the best checkpoint with a worse one."""
    import keras

    def callbacks():
        made = [keras.callbacks.EarlyStopping(patience=3), keras.callbacks.ReduceLROnPlateau(patience=2),
                keras.callbacks.ModelCheckpoint(str(tmp_path / "best.weights.h5"), save_best_only=True, save_weights_only=True)]
        return made + [training.CallbackStateBackup(tmp_path / "backup" / "state.json", made)]

    first = callbacks()
    for callback in first:
        callback.on_train_begin()
    first[0].wait, first[0].best, first[0].best_epoch = 2, 0.5, 3
    first[1].wait, first[1].best, first[1].cooldown_counter = 1, 0.25, 0
    first[2].best = 0.5
    first[3].on_epoch_end(4)
    second = callbacks()
    for callback in second:  # in list order, as Keras calls them
        callback.on_train_begin()
    assert (second[0].wait, second[0].best, second[0].best_epoch) == (2, 0.5, 3)
    assert (second[1].wait, second[1].best) == (1, 0.25) and second[2].best == 0.5
    fresh = [keras.callbacks.EarlyStopping(patience=3)]
    training.CallbackStateBackup(tmp_path / "elsewhere.json", fresh).on_train_begin()  # a new run: nothing to restore
    assert fresh[0].wait == 0


def test_evaluate_py_on_the_trained_run_beats_chance_and_matches_training(trained, shard_dir, tmp_path):
    """The user's path: train, then `evaluate.py --model RUN` on the held-out shards."""
    results, output = trained
    report_dir = tmp_path / "eval"
    done = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), "--model", str(output), "--shards", shard_dir, "--split", "val",
         "--output-dir", str(report_dir), "--no-cache", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((report_dir / "report.json").read_text())
    chance_r5 = 5 / 150
    assert report["text_to_image"]["R@5"] > 3 * chance_r5 and report["image_to_text"]["R@5"] > 3 * chance_r5
    assert report["text_to_image"]["R@5"] == pytest.approx(results["retrieval"]["text_to_image"]["R@5"], abs=0.02)


def test_train_checks_values_written_past_the_config_checks(shard_dir, tmp_path):
    from dual_encoder.errors import InvalidArgumentError

    config = tiny_config(epochs=1)
    object.__setattr__(config.train, "epochs", 0)  # as a caller poking the dataclass directly would
    with pytest.raises(InvalidArgumentError, match="--epochs"):
        training.train(config, [shard_dir], tmp_path / "run", verbose=0)


def test_a_diverged_epoch_is_never_saved_over_the_last_good_one(shard_dir, tmp_path, monkeypatch):
    from dual_encoder.training import checkpoints

    run = tmp_path / "run"
    training.train(tiny_config(epochs=1), [shard_dir], run, verbose=0, export=False)

    def nan_loss(*args, **kwargs):
        loss, a, b = losses.infonce(*args, **kwargs)
        return loss * float("nan"), a, b

    monkeypatch.setitem(losses.LOSSES, "infonce", nan_loss)
    with pytest.raises(training.TrainingDiverged, match="epoch 2, batch 1"):
        training.train(tiny_config(epochs=2), [shard_dir], run, verbose=0, export=False)
    for name in ("backup/latest.weights.h5", "checkpoints/last.weights.h5", "checkpoints/best.weights.h5"):
        assert checkpoints.recorded_epoch(run / name) == 1, name  # rerunning resumes from good weights


def test_a_run_folder_from_before_a_new_setting_still_resumes(shard_dir, tmp_path):
    run = tmp_path / "run"
    training.train(tiny_config(epochs=1), [shard_dir], run, verbose=0, export=False)
    saved = json.loads((run / "config.json").read_text())
    del saved["data"]["skip_damaged_shards"]  # as config.json was written before that flag existed
    (run / "config.json").write_text(json.dumps(saved))
    config = tiny_config(epochs=2)
    config.data.skip_damaged_shards = True  # the way out a damaged-shard error offers: allowed on resume
    assert training.train(config, [shard_dir], run, verbose=0, export=False)["epochs_this_call"] == 1


def test_a_size_the_tower_cannot_take_is_named_by_its_flags(shard_dir, tmp_path):
    from dual_encoder.errors import InvalidArgumentError

    config = tiny_config(epochs=1)
    config.model.image_encoder, config.model.pretrained, config.model.image_size = "xception", False, 32
    with pytest.raises(InvalidArgumentError, match=r"--image-encoder xception --image-size 32 .*at least 71"):
        training.train(config, [shard_dir], tmp_path / "run", verbose=0)
