#!/usr/bin/env python
"""Embedding throughput (images/s, captions/s) and search latency over stored embeddings.

  python benchmarks/embedding_throughput.py                      # the colour test model, built here
  python benchmarks/embedding_throughput.py --model runs/sample  # any --model evaluate.py accepts

Throughput is measured twice for images: model only (arrays already at the prep size) and end to
end from JPEG bytes (decode + RGB normalisation + resize + model), the path evaluate.py takes.
Search latency is exact cosine top-10 for 64 queries over 10k / 100k / 1M random unit vectors
(float32, --dim wide: 1M x 256 is 1 GB), median of --repeats runs. Prints one table.
"""

from __future__ import annotations

import dual_encoder.cli  # noqa: F401  (first: the tools' TensorFlow defaults, before TensorFlow loads)

# isort: split
import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np

from dual_encoder.evaluation.embedders import load_embedder
from dual_encoder.evaluation.retrieval import EmbeddingIndex

ROOT = Path(__file__).resolve().parents[1]

INDEX_SIZES = (10_000, 100_000, 1_000_000)
QUERIES, TOP_K = 64, 10


def _seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _jpegs(count: int, rng) -> list[bytes]:
    """Sample-set pictures at 448 px, JPEG-encoded: smooth like photos, not like noise."""
    from PIL import Image

    from dual_encoder.data.sample import render, sample_scenes

    out = []
    for scene in sample_scenes(count, seed=1):
        buffer = io.BytesIO()
        Image.fromarray(render(scene, 448, rng)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _random_unit(n: int, dim: int, rng) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _search_seconds(index: EmbeddingIndex, queries: np.ndarray, repeats: int) -> float:
    """Median seconds of one top-K search for all queries; the index is freed when this returns."""
    index.search(queries, TOP_K)  # warm-up
    return _seconds(lambda: index.search(queries, TOP_K), repeats)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model as for evaluate.py (default: the colour test SavedModel)")
    parser.add_argument("--images", type=int, default=256, help="images per throughput run")
    parser.add_argument("--captions", type=int, default=2048, help="captions per throughput run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dim", type=int, default=256, help="embedding size for the search benchmark")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(INDEX_SIZES), help="stored embeddings")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from dual_encoder.testing import build_colour_saved_model

            model = str(build_colour_saved_model(Path(tmp) / "saved_model"))
        embedder = load_embedder(model, batch_size=args.batch_size, progress=False)
        side = embedder.prep.side
        arrays = [rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8) for _ in range(args.images)]
        jpegs = _jpegs(args.images, rng)
        captions = [f"a photo of {i} red and blue things on a street at night" for i in range(args.captions)]
        embedder.encode_images(arrays[: args.batch_size])  # warm-up: traces the graph once
        embedder.encode_texts(captions[: args.batch_size])
        rows = [
            ("images/s, model only", args.images / _seconds(lambda: embedder.encode_images(arrays), args.repeats)),
            ("images/s, from JPEG", args.images / _seconds(lambda: embedder.encode_images(jpegs), args.repeats)),
            ("captions/s", args.captions / _seconds(lambda: embedder.encode_texts(captions), args.repeats)),
        ]
        description = embedder.describe()

    print(f"model: {description.get('path') or description.get('preset')}  prep: {description['preprocessing']}")
    print(f"{'embedding throughput':<34}{'value':>12}")
    for name, value in rows:
        print(f"{name:<34}{value:>12.1f}")
    print()
    print(f"{'search (exact, top-%d, %d queries)' % (TOP_K, QUERIES):<34}{'ms/batch':>12}{'ms/query':>12}{'queries/s':>12}")
    queries = _random_unit(QUERIES, args.dim, rng)
    for size in args.sizes:
        seconds = _search_seconds(EmbeddingIndex(_random_unit(size, args.dim, rng)), queries, args.repeats)
        print(f"{f'{size:,} stored x {args.dim}-d':<34}{seconds * 1e3:>12.1f}{seconds * 1e3 / QUERIES:>12.3f}"
              f"{QUERIES / seconds:>12.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
