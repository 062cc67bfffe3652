#!/usr/bin/env python
"""How fast extraction could be on this CPU: each tower's best rate on every runtime at hand, and
the shortest extraction those rates allow, against `before` of the same host.

  python benchmarks/extraction_throughput.py          # first: before / after on this host
  python benchmarks/extraction_ceiling.py             # then: the ceiling, read against that run
  pip install openvino                                # optional: adds OpenVINO's rows (not a dependency)

Each tower runs on inputs prepared beforehand (decoded photos; captions tokenized and sorted by
length, each batch cut to its longest caption, as the feature cache runs them), warmed up, in one
process, each runtime `--repeats` times round-robin; the table gives the best and the median pass.
Runtimes: TensorFlow as the cache ran it before (weights as variables), with the weights as
constants (grappler folds the batch norms of regular convs), with every batch norm folded
(towers/frozen_graph.py: what the cache runs now), TensorFlow with XLA, and OpenVINO in float32
(`INFERENCE_PRECISION_HINT=f32`: on CPUs with AVX512_BF16 its default is bfloat16) where installed.
Also: a 4096 x 4096 float32 matmul, the practical peak of this CPU (its boost clock, and on AMD
Zen 4 the AVX-512 units that are 256 bits wide inside), and the decoding rate alone.

The ceiling, `photos / best image rate + captions / best caption rate`, leaves out decoding,
tokenizing, tracing and writing, and assumes neither tower slows the other: no real extraction
of those photos and captions is faster, so `before / ceiling` is the most any fp32 change can gain.
"""

from __future__ import annotations

import dual_encoder.cli  # noqa: F401  (first: the tools' TensorFlow defaults, before TensorFlow loads)

# isort: split
import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from extraction_throughput import flickr8k_rows, lit_towers, peak_flops  # (benchmarks/ is on sys.path when run)

from dual_encoder import files

ROOT = Path(__file__).resolve().parents[1]
IMAGE_BATCH = TEXT_BATCH = 64  # as train() extracts (FeatureCache.extract(batch_size=64))


def decoded(paths: list, image_tower) -> tuple:
    """float32 photos at the tower's size, and the decoding rate (images/s) of the cache's decode."""
    import tensorflow as tf

    from dual_encoder.data import pipeline

    jpegs = tf.data.Dataset.from_tensor_slices([tf.io.read_file(str(p)) for p in paths])
    started = time.perf_counter()
    batches = [b.numpy() for b in jpegs.map(lambda j: pipeline.decode_image(j, image_tower.image_size, image_tower.resize),
                                            num_parallel_calls=pipeline.AUTOTUNE).batch(IMAGE_BATCH)]
    return batches, len(paths) / (time.perf_counter() - started)


def image_runtimes(tower) -> dict:
    """name -> callable(float32 batch) -> features."""
    import tensorflow as tf

    from dual_encoder.towers import frozen_graph
    from dual_encoder.training import feature_cache

    signature = [tf.TensorSpec([None, *tower.image_size, 3], tf.float32)]

    def features(images):
        return tf.cast(tower.model(images, training=False), tf.float32)

    runtimes = {"tensorflow, variables (before)": tf.function(features, input_signature=signature),
                "tensorflow, constants (grappler folds)": frozen_graph.inference_function(features, signature, fold=False),
                "tensorflow, all batch norms folded (now)": feature_cache._forward(tower),
                "tensorflow + XLA": tf.function(features, jit_compile=True)}
    openvino = _openvino(features, signature)
    if openvino:
        runtimes["openvino f32"] = openvino
    return {name: (lambda f: lambda x: np.asarray(f(x)))(f) for name, f in runtimes.items()}


def text_runtimes(text_features, names: list) -> dict:
    """name -> callable(token arrays cut to a batch's length) -> features; `text_features` is the
    cache's `TextFeatures` (its traced tower is the "now" row)."""
    import tensorflow as tf

    def features(inputs):
        return tf.cast(text_features.tower.model(inputs, training=False), tf.float32)

    signature = [{name: tf.TensorSpec([None, None], tf.int32) for name in names}]
    runtimes = {"tensorflow, per-length graph (now)": lambda t: text_features._forward(t["padding_mask"].shape[1], t)}
    openvino = _openvino(features, signature)
    if openvino:
        runtimes["openvino f32"] = lambda t: openvino([t[k] for k in names])
    return runtimes


def _openvino(function, signature):
    """OpenVINO's CPU plugin running `function` in float32, or None where openvino is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    import tensorflow as tf

    model = openvino.convert_model(tf.function(function, input_signature=signature).get_concrete_function())
    compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    return lambda x: compiled(x)[0]


def text_batches(text_features, captions: list) -> list:
    """Token arrays per batch of TEXT_BATCH captions sorted by length, cut to the batch's longest."""
    tokens = text_features.tokens(captions)
    lengths = tokens["padding_mask"].sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    batches = []
    for start in range(0, len(order), TEXT_BATCH):
        rows = order[start : start + TEXT_BATCH]
        batches.append({k: np.ascontiguousarray(v[rows, : int(lengths[rows].max())]) for k, v in tokens.items()})
    return batches


def passes(runtimes: dict, batches: list, repeats: int, only_first: dict) -> dict:
    """name -> {"items", "seconds": [per pass], "outputs": features}; round-robin after one
    warm-up pass (every batch shape). `only_first[name]` limits a slow runtime to its first n batches."""
    chosen = {name: batches[: only_first.get(name, len(batches))] for name in runtimes}
    results = {name: {"items": sum(len(next(iter(b.values())) if isinstance(b, dict) else b) for b in chosen[name]),
                      "seconds": [], "outputs": np.concatenate([run(b) for b in chosen[name]])}
               for name, run in runtimes.items()}  # fmt: skip
    for _ in range(repeats):
        for name, run in runtimes.items():
            results[name]["seconds"].append(_timed(lambda: [run(b) for b in chosen[name]]))
    return results


def gemm_peak(size: int = 4096, repeats: int = 5) -> float:
    import tensorflow as tf

    a, b = tf.random.stateless_normal([size, size], seed=[1, 2]), tf.random.stateless_normal([size, size], seed=[3, 4])
    matmul = tf.function(tf.matmul)
    matmul(a, b).numpy()
    best = min(_timed(lambda: matmul(a, b).numpy()) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def summarise(results: dict, reference: str) -> dict:
    out = {}
    for name, r in results.items():
        n, ref = r["items"], results[reference]["outputs"][: len(r["outputs"])]
        change = float(np.abs(r["outputs"] - ref).max())
        out[name] = {"items": n, "best_per_second": n / min(r["seconds"]),
                     "median_per_second": n / statistics.median(r["seconds"]),
                     "max_abs_change": change, "max_relative_change": change / float(np.abs(ref).max())}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the shared folder (data/ and weights/)")
    parser.add_argument("--photos", type=int, default=256, help="Flickr8k photos each image runtime embeds per pass")
    parser.add_argument("--captions", type=int, default=2000, help="Flickr8k captions each text runtime embeds per pass")
    parser.add_argument("--xla-photos", type=int, default=64, help="photos for XLA (~20x slower here), at least one batch")
    parser.add_argument("--repeats", type=int, default=3, help="passes of each runtime, round-robin")
    parser.add_argument("--top-only", action="store_true", help="the towers' top features only (as `before`/`after`), not lit's")
    parser.add_argument("--throughput", type=Path, default=ROOT / "benchmarks" / "results" / "extraction_throughput.json",
                        help="benchmarks/extraction_throughput.py's results on this host (its before row is the reference)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "extraction_ceiling.json",
                        help="results JSON")
    args = parser.parse_args(argv)
    if not (args.shared / "data" / "flickr8k").is_dir() or not (args.shared / "weights").is_dir():
        print(f"skipped: the real data and towers are not under {args.shared}; pass --shared DIR")
        return 0
    if not args.throughput.is_file():
        parser.error(f"--throughput {args.throughput}: no such file; run benchmarks/extraction_throughput.py first")
    throughput = json.loads(args.throughput.read_text())
    before_row, after_row = ("before", "after") if args.top_only else ("lit_before", "lit")
    if before_row not in throughput["results"]:
        parser.error(f"--throughput {args.throughput} has no {before_row!r} row; run it with --variants {before_row} {after_row}")
    started = time.perf_counter()
    from dual_encoder.towers.features import TextFeatures

    rows = flickr8k_rows(args.shared, args.photos)
    captions = [caption for _, caption in flickr8k_rows(args.shared, args.captions // 5 + 1)][: args.captions]
    image, text = lit_towers(args.shared, not args.top_only, captions)
    images, decode_rate = decoded(list(dict.fromkeys(path for path, _ in rows)), image)
    text_features = TextFeatures(text)
    tokens = text_batches(text_features, captions)
    xla_batches = max(1, args.xla_photos // IMAGE_BATCH)
    image_results = summarise(passes(image_runtimes(image), images, args.repeats, {"tensorflow + XLA": xla_batches}),
                              "tensorflow, variables (before)")
    text_results = summarise(passes(text_runtimes(text_features, list(tokens[0])), tokens, args.repeats, {}),
                             "tensorflow, per-length graph (now)")
    peak = gemm_peak()
    before = throughput["results"][before_row]
    after = throughput["results"].get(after_row)
    best_image = max(r["best_per_second"] for r in image_results.values())
    best_text = max(r["best_per_second"] for r in text_results.values())
    ceiling = before["images"] / best_image + before["captions"] / best_text
    lines = ["| tower | runtime | best items/s | median items/s | max change (abs / relative) |", "|---|---|---:|---:|---:|"]
    for tower, results in (("image", image_results), ("text", text_results)):
        lines += [f"| {tower} | {name} | {r['best_per_second']:.0f} | {r['median_per_second']:.0f} | "
                  f"{r['max_abs_change']:.1e} / {r['max_relative_change']:.1e} |" for name, r in results.items()]
    table = "\n".join(lines)
    speedup = before["extraction_seconds"] / ceiling
    summary = (f"{'top features' if args.top_only else 'lit (mid-level features)'}; float32 matmul peak "
               f"{peak / 1e9:.0f} GFLOP/s; decoding alone {decode_rate:.0f} images/s. For {before['images']} photos and "
               f"{before['captions']} captions: ceiling {ceiling:.1f} s (best rates {best_image:.0f} images/s, "
               f"{best_text:.0f} captions/s), {before_row} {before['extraction_seconds']:.1f} s"
               + (f", {after_row} {after['extraction_seconds']:.1f} s" if after else "")
               + f" (same host, {args.throughput.name}): at most {speedup:.2f}x over {before_row}")
    reference = {"file": args.throughput.name, "before_row": before_row, "before_seconds": before["extraction_seconds"],
                 "after_row": after_row, "after_seconds": after and after["extraction_seconds"],
                 "images": before["images"], "captions": before["captions"]}
    output = {"benchmark": "extraction_ceiling",
              "command": ["benchmarks/extraction_ceiling.py", *(argv if argv is not None else sys.argv[1:])],
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "cpu": peak_flops(), "towers": "top" if args.top_only else "lit", "matmul_flops_per_second": peak,
              "decode_images_per_second": decode_rate, "image": image_results, "text": text_results,
              "ceiling_seconds": ceiling, "reference": reference, "max_speedup_over_before": speedup,
              "table": table, "summary": summary, "total_seconds": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(files.portable_paths(output), indent=2))
    print("\n" + summary + "\n\n" + table + f"\n\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
