"""WiSE-FT: (1 - alpha) * pretrained + alpha * fine-tuned, exported by --wise-ft and swept by
`evaluate.py wise-ft` (alpha 0 is the --init checkpoint exactly, alpha 1 the fine-tuned run)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import config as run_config
from dual_encoder import training
from dual_encoder.cli import evaluate as evaluate_cli
from dual_encoder.cli import train as train_cli
from dual_encoder.testing import build_tiny_clip_preset, write_colour_folders, write_sample_shards_with_the_data_cli
from dual_encoder.training import wise_ft

TEXTS = ["a photo of a cat", "two red circles on the left"]


def test_the_mix_is_exact_at_both_ends_and_linear_between():
    pretrained = [np.array([0.0, 1.0], np.float32), np.array([[2.0]], np.float32), np.array([7], np.int64)]
    finetuned = [np.array([1.0, 3.0], np.float32), np.array([[4.0]], np.float32), np.array([9], np.int64)]
    assert [m.tolist() for m in wise_ft.mix(pretrained, finetuned, 0.0)] == [[0.0, 1.0], [[2.0]], [9]]
    assert [m.tolist() for m in wise_ft.mix(pretrained, finetuned, 1.0)] == [[1.0, 3.0], [[4.0]], [9]]
    quarter = wise_ft.mix(pretrained, finetuned, 0.25)
    assert quarter[0].tolist() == [0.25, 1.5] and quarter[1].tolist() == [[2.5]] and quarter[0].dtype == np.float32
    assert quarter[2].tolist() == [9]  # integer state (seeds) is the fine-tuned model's


def test_a_model_mixed_at_0_is_the_checkpoint_and_at_1_the_fine_tuned_model(tmp_path):
    config = run_config.finetune(str(build_tiny_clip_preset(tmp_path / "clip")))
    image, text, _ = training.build_towers(config, [])
    model = training.build_model(config, image, text)
    pretrained = wise_ft.weights_of(model)
    start = model.encode_texts(tf.constant(TEXTS)).numpy()
    rng = np.random.default_rng(0)
    for variable in model.weights:  # a stand-in for fine-tuning: every float weight moved
        value = np.asarray(variable.numpy())
        if np.issubdtype(value.dtype, np.floating):
            variable.assign(value + rng.normal(0, 0.05, value.shape).astype(value.dtype))
    finetuned = wise_ft.weights_of(model)
    moved = model.encode_texts(tf.constant(TEXTS)).numpy()
    assert wise_ft.apply_mix(model, pretrained, finetuned, 0.0) == sum(np.issubdtype(w.dtype, np.floating) for w in finetuned)
    np.testing.assert_array_equal(model.encode_texts(tf.constant(TEXTS)).numpy(), start)
    wise_ft.apply_mix(model, pretrained, finetuned, 1.0)
    np.testing.assert_array_equal(model.encode_texts(tf.constant(TEXTS)).numpy(), moved)
    wise_ft.apply_mix(model, pretrained, finetuned, 0.5)
    kernel = model.text_head.project.kernel
    index = [i for i, v in enumerate(model.weights) if v is kernel][0]
    np.testing.assert_allclose(kernel.numpy(), (pretrained[index] + finetuned[index]) / 2, atol=1e-7)


def test_wise_ft_alphas_outside_0_1_are_refused_before_anything_loads(tmp_path, capsys):
    assert evaluate_cli.main(["wise-ft", "--run", str(tmp_path / "nothing"), "--alphas", "0", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --alphas must be a number in [0, 1], got 1.5"


@pytest.mark.slow
def test_the_sweep_ends_are_the_checkpoint_and_the_run(tmp_path, capsys):
    """evaluate.py wise-ft on a run fine-tuned hard enough to change: the alpha-0 row is what
    evaluate.py measures on the preset, the alpha-1 row what it measures on the run's SavedModel
    (zero-shot on 32 px images, where the preset's Pillow resize and training's agree, and retrieval)."""
    preset = build_tiny_clip_preset(tmp_path / "clip")
    shards = write_sample_shards_with_the_data_cli(tmp_path / "S", images=64)
    run = tmp_path / "run"
    argv = ["--init", str(preset), "--tfrecords", str(shards), "--epochs", "2", "--learning-rate", "1e-3",
            "--batch-size", "32", "--output-dir", str(run), "--quiet"]
    assert train_cli.main(argv) == 0
    folder = write_colour_folders(tmp_path / "colours", ["red", "green", "blue"], per_class=4, side=32)
    reference = ["--reference-dataset", "folder", "--reference-dir", str(folder), "--templates", "a photo of a {}."]
    argv = ["wise-ft", "--run", str(run), "--alphas", "0", "0.5", "1", *reference, "--quiet"]
    assert evaluate_cli.main(argv) == 0
    assert "alpha" in capsys.readouterr().out
    report = json.loads((run / "wise_ft" / "wise_ft.json").read_text())
    assert [row["alpha"] for row in report["rows"]] == [0.0, 0.5, 1.0] and (run / "wise_ft" / "wise_ft.png").is_file()

    def zero_shot(model):
        out = tmp_path / f"zs-{model.name}"
        assert evaluate_cli.main(["--model", str(model), "--dataset", "folder", "--data-dir", str(folder), "--templates",
                                  "a photo of a {}.", "--no-cache", "--quiet", "--output-dir", str(out)]) == 0
        return json.loads((out / "report.json").read_text())

    first, last = report["rows"][0], report["rows"][-1]
    for row, model in ((first, preset), (last, run)):
        measured = zero_shot(model)
        assert row["reference"]["accuracy"] == pytest.approx(measured["accuracy"])
        assert row["reference"]["mean_per_class_recall"] == pytest.approx(measured["mean_per_class_recall"])
    out = tmp_path / "retrieval"  # evaluate.py retrieval of the run's SavedModel on the same validation shards
    assert evaluate_cli.main(["--model", str(run), "--shards", str(shards), "--split", "val", "--no-cache", "--quiet",
                              "--output-dir", str(out)]) == 0
    trained = json.loads((out / "report.json").read_text())
    for direction in ("text_to_image", "image_to_text"):
        for k in ("R@1", "R@5", "R@10"):
            assert last["domain"][direction][k] == pytest.approx(trained[direction][k])
    _, pretrained, finetuned, _ = wise_ft.load_run(run)
    assert max(float(np.abs(a - b).max()) for a, b in zip(finetuned, pretrained)) > 1e-3  # the run really moved
