"""Shared fixtures: small shard folders written by the tests themselves."""


import pytest

import dual_encoder.cli  # noqa: F401  (before TensorFlow loads: tests run with the tools' TensorFlow defaults)
from dual_encoder.testing import write_shard


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory):
    """A train and a val shard of the built-in sample set (48 px, 5 captions per image)."""
    from dual_encoder.data.sample import sample_records

    folder = tmp_path_factory.mktemp("sample_shards")
    records = sample_records(num_images=360, image_size=48, seed=3)
    return {
        "train": [write_shard(folder / "train-00000-of-00001.tfrecord", records[:300])],
        "val": [write_shard(folder / "val-00000-of-00001.tfrecord", records[300:])],
        "records": records,
    }


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """600 sample images (48 px) written by the shard writer: 450 train in 3 shards, 150 val."""
    from dual_encoder.data.records import SkipCounter
    from dual_encoder.data.sample import sample_records
    from dual_encoder.data.tfrecords import write_shards

    out = tmp_path_factory.mktemp("shards")
    records = sample_records(num_images=600, image_size=48, seed=5)
    write_shards(records, str(out), source_info={"type": "sample"}, skipped=SkipCounter(), val_fraction=0.25, seed=0,
                 images_per_shard=200, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def quality():
    """benchmarks/quality.py as a module (benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("quality_benchmark", Path(__file__).parents[1] / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
