"""tf.distribute: two replicas take exactly one device's step; two workers train in lockstep.

Both run in subprocesses: two logical CPUs must be configured before TensorFlow starts its
devices, and every MultiWorkerMirroredStrategy worker is a process of its own (TF_CONFIG,
ports on 127.0.0.1).
"""

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from dual_encoder.data.records import SkipCounter
from dual_encoder.data.sample import sample_records
from dual_encoder.data.tfrecords import write_shards

TESTS = Path(__file__).resolve().parent
LOSSES = ("infonce",)  # siglip and soft_target pass as well: python tests/distribute_replicas.py siglip (~30 s each)
TOLERANCE = 1e-5
WORKER_TIMEOUT = 420


@pytest.fixture(scope="module")
def replica_steps():
    done = subprocess.run([sys.executable, str(TESTS / "distribute_replicas.py"), *LOSSES],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSSES)
def test_two_replicas_take_the_single_device_step(replica_steps, loss):
    """Loss, metrics and the weights after one SGD step (lr 1: minus the gradient) of every
    trainable variable match one device, for even, uneven and one-sided splits of the batch."""
    result = replica_steps[loss]
    assert result["mask_effect"] > 1e-3  # the two pairs of one image (one per replica) change the loss
    for step in result["steps"]:
        single, mirrored = step["logs"]["single"], step["logs"]["mirrored"]
        assert step["replicas"] == 2
        assert all(math.isfinite(v) for v in mirrored.values()), step
        assert abs(mirrored["loss"] - single["loss"]) <= TOLERANCE, step
        for name in ("i2t_accuracy", "t2i_accuracy", "temperature"):
            assert mirrored[name] == pytest.approx(single[name], abs=1e-6), (name, step)
        # float32 sums in another order: 1e-5 of the largest gradient where that exceeds 1
        assert step["max_abs_weight_diff"] <= TOLERANCE * max(1.0, step["max_abs_gradient"]), step
        assert step["max_abs_replica_spread"] == 0.0, step  # every replica holds the same weights
    assert result["steps"][0]["max_abs_gradient"] > 0.1  # the step really moved the weights
    evaluated = result["evaluate"]
    assert evaluated["mirrored"] == pytest.approx(evaluated["single"], abs=TOLERANCE)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(command, count, cwd):
    """Starts `count` MultiWorkerMirroredStrategy workers; a failing one stops the rest, which
    would otherwise wait for it in a collective forever. Returns (return codes, outputs)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(count)]}
    logs = [open(cwd / f"worker-{i}.log", "w+") for i in range(count)]
    processes = [
        subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                         env={**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                                                  "index": i}})})
        for i, log in enumerate(logs)
    ]
    deadline = time.time() + WORKER_TIMEOUT
    while time.time() < deadline and any(p.poll() is None for p in processes):
        if any(p.poll() not in (None, 0) for p in processes):
            break
        time.sleep(0.5)
    for p in processes:
        if p.poll() is None:
            p.kill()
        p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return [p.returncode for p in processes], outputs


def h5_arrays(path):
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, np.array(item)) if isinstance(item, h5py.Dataset) else None)
    return arrays


@pytest.mark.slow
def test_two_workers_train_in_lockstep(tmp_path):
    """train.py --strategy multiworker with two workers on 127.0.0.1: uneven train shards split by
    file (one worker runs out first), one validation shard split by data, the chief writes the run
    folder and the other worker its own copy under workers/; both end with the same weights."""
    shards = tmp_path / "shards"
    records = sample_records(num_images=64, image_size=32, seed=5)
    write_shards(records, str(shards), source_info={"type": "sample"}, skipped=SkipCounter(), val_fraction=0.25,
                 seed=0, images_per_shard=20, progress=False)  # train: 20 + 20 + 8 images (28 / 20 per worker), val: 16
    run = tmp_path / "run"
    command = [sys.executable, str(TESTS.parent / "train.py"), "--tfrecords", str(shards), "--preset", "sample",
               "--strategy", "multiworker", "--output-dir", str(run), "--epochs", "2", "--image-size", "32",
               "--batch-size", "16", "--projection-dim", "16", "--captions-per-image", "1", "--sequence-length", "16",
               "--no-export", "--quiet"]
    codes, outputs = run_workers(command, 2, tmp_path)
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)

    worker = run / "workers" / "worker-1"
    for folder in (run, worker):
        for name in ("results.json", "log.csv", "model.keras", "checkpoints/last.weights.h5", "backup/training_metadata.json"):
            assert (folder / name).exists(), folder / name
    assert sorted(p.name for p in (run / "workers").iterdir()) == ["worker-1"]
    chief, other = (h5_arrays(folder / "checkpoints" / "last.weights.h5") for folder in (run, worker))
    assert chief.keys() == other.keys() and len(chief) > 20
    assert max(float(np.abs(chief[k] - other[k]).max(initial=0.0)) for k in chief) == 0.0
    assert (run / "log.csv").read_text() == (worker / "log.csv").read_text()
    results = json.loads((run / "results.json").read_text())
    assert results["strategy"] == {"name": "multiworker", "replicas": 2}
    assert results["epochs_run"] == 2 and all(math.isfinite(v) for v in results["final"].values())


def test_multiworker_after_tensorflow_started_says_what_to_do(monkeypatch):
    """This process already ran TensorFlow ops: too late to configure collectives."""
    import tensorflow as tf

    from dual_encoder import training

    tf.constant(1.0) + 1.0
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}  # never contacted
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="fresh process"):
        training.make_strategy("multiworker")
