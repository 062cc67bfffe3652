#!/usr/bin/env python
"""Speed of the frozen towers: feature extraction (images/s, captions/s), FLOPs, share of peak.

  python benchmarks/extraction_throughput.py                       # 1,000 Flickr8k photos, 5,000 captions
  python benchmarks/extraction_throughput.py --photos 300 --out /tmp/x.json

Extraction is what `train.py` does first with frozen towers (`training/feature_cache.py`): decode
each JPEG, resize it as the image tower says, run EfficientNet-Lite0 (../shared/weights); tokenize
each caption and run all-MiniLM-L6-v2. Each variant runs in a fresh process (as `train.py` does:
a process's first minute of big allocations is slower than its later ones, so reusing one process
would flatter whichever variant runs last), end to end through `FeatureCache.extract`:

- `before`: extraction as it was (the towers as tf.functions over variables, every image
  resized even when already at the tower's size, caption buckets of 16 / 32 / 64 tokens);
- one change at a time: `resize_skip`, `constant_graph` (the image tower's weights as
  constants, so TensorFlow folds each batch norm into its conv), `caption_lengths` (captions
  sorted by length, each batch run at its longest caption's length), `concurrent_towers` (the
  captions computed in a second thread while the images are);
- `folded_depthwise` on top of the constant graph: every batch norm folded into its conv by
  `towers/frozen_graph.py`, depthwise ones included (grappler folds regular convs only);
- `after`: all five (what the code does now); `after_four`: all but the folded depthwise convs
  (what it did before them); `after_exact`: all but the constant graph, whose folded batch
  norms are the only change that moves a feature value (by ~1e-5); `after_sequential`: all but
  the concurrent towers; `--variants after_bfc` adds `after` with TensorFlow's pooling CPU
  allocator (TF_CPU_ALLOCATOR_USE_BFC=true), measured with no gain.

Those rows run the towers' top features only, as extraction was when this was first measured.
`lit` also caches mid-level features (EfficientNet's 4 stage outputs, MiniLM's 5th block), and
more rows run its towers: `lit_before` (all changes off), `lit_full_length` (the
image changes on, but every caption at the full 32 tokens and the towers one after the other:
the padding check accepted one pooling layer only, so that is how `lit` ran until the check
took its two), `lit_four` (all but the folded depthwise convs) and `lit` (now).
Each group's speedups and feature changes are against its own first row.

This machine's speed drifts from minute to minute (a shared host: the same process measured
97 and 190 images/s on back-to-back passes), so `--repeats` runs every variant that many times,
round-robin (each variant sees the same drift), and the table gives each variant's median run
(by extraction seconds, the wall time of `FeatureCache.extract`) with the range of its rates.
With concurrent towers, images/s and captions/s are each tower's rate while the other runs
beside it; the end-to-end speedup is the ratio of extraction seconds.

Prints images/s and captions/s, the towers' FLOPs per item (TensorFlow's profiler on the
graphs that run), the FLOP/s achieved and their share of this CPU's peak (cores x clock x 32
FLOP/cycle: two AVX2 FMA units of 8 float32 lanes each; where the CPU has AVX-512, which oneDNN
then uses, the JSON also gives the share of the 64 FLOP/cycle peak of cores with 512-bit units,
as AMD Zen 5; Zen 4 runs AVX-512 on 256-bit units, and the nominal clock is not the boost clock:
benchmarks/extraction_ceiling.py measures the real peak with a float32 matmul), the speedups
over `before`, and the largest change of any feature value against `before`.
"""

from __future__ import annotations

import dual_encoder.cli  # noqa: F401  (first: the tools' TensorFlow defaults, before TensorFlow loads)

# isort: split
import argparse
import collections
import csv
import datetime
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from dual_encoder import files

ROOT = Path(__file__).resolve().parents[1]
SWITCHES = ("resize_skip", "constant_graph", "caption_lengths", "bfc_allocator", "mid_level", "concurrent_towers",
            "folded_depthwise")
Variant = collections.namedtuple("Variant", SWITCHES, defaults=(False,) * len(SWITCHES))
ALL_FOUR = dict(resize_skip=True, constant_graph=True, caption_lengths=True, concurrent_towers=True)
ALL_FIVE = dict(ALL_FOUR, folded_depthwise=True)
VARIANTS = {
    "before": Variant(),
    "resize_skip": Variant(resize_skip=True),
    "constant_graph": Variant(constant_graph=True),
    "caption_lengths": Variant(caption_lengths=True),
    "concurrent_towers": Variant(concurrent_towers=True),
    "after_four": Variant(**ALL_FOUR),
    "after": Variant(**ALL_FIVE),
    "after_exact": Variant(**{**ALL_FOUR, "constant_graph": False}),
    "after_sequential": Variant(**{**ALL_FIVE, "concurrent_towers": False}),
    "after_bfc": Variant(**ALL_FIVE, bfc_allocator=True),
    "lit_before": Variant(mid_level=True),
    "lit_full_length": Variant(resize_skip=True, constant_graph=True, mid_level=True),
    "lit_four": Variant(**ALL_FOUR, mid_level=True),
    "lit": Variant(**ALL_FIVE, mid_level=True),
}
DEFAULT_VARIANTS = [name for name in VARIANTS if name != "after_bfc"]  # BFC: measured, no gain (README)


def reference(name: str) -> str:
    """The row a variant is compared with: the first of its group (top features only, or lit's)."""
    return "lit_before" if VARIANTS[name].mid_level else "before"
FLOP_PER_CYCLE = 32  # float32 FMA: 2 units x 8 lanes (AVX2) x 2 FLOP
AVX512_FLOP_PER_CYCLE = 64  # the same two units 16 lanes wide, where the CPU has AVX-512 (oneDNN then uses it)


def peak_flops() -> dict:
    """cores x clock x FLOP_PER_CYCLE (the AVX2 peak the shares are against), the clock read from
    /proc/cpuinfo; with `avx512f` among its flags, also the AVX-512 peak (twice that, if both FMA
    units are 512 bits wide, as on AMD Zen 5 and Intel server cores)."""
    mhz, flags, cpu = None, set(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "cpu MHz" and mhz is None:
                mhz = float(value)
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key in ("model name", "cpu family", "model"):  # AMD family 25 is Zen 3/4, 26 is Zen 5
                cpu.setdefault(key, value)
    except OSError:
        pass
    cores = os.cpu_count() or 1
    peak = lambda per_cycle: None if mhz is None else cores * mhz * 1e6 * per_cycle  # noqa: E731
    return {"cores": cores, "mhz": mhz, "cpu": cpu, "flop_per_cycle": FLOP_PER_CYCLE, "flops": peak(FLOP_PER_CYCLE),
            "avx512": "avx512f" in flags, "avx512_flops": peak(AVX512_FLOP_PER_CYCLE) if "avx512f" in flags else None}


def flickr8k_rows(shared: Path, photos: int) -> list:
    """(photo path, caption) of the first `photos` Flickr8k photos (sorted by name), every caption, in file order."""
    images = (shared / "data" / "flickr8k" / "Images").resolve()
    with open(shared / "data" / "flickr8k" / "captions.txt", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    chosen = set(sorted({r["image"] for r in rows})[:photos])
    return [(images / r["image"], r["caption"]) for r in rows if r["image"] in chosen]


def lit_towers(shared: Path, mid_level: bool, captions: list):
    """`lit`'s towers from ../shared/weights (its mid-level features too, with `mid_level`)."""
    from dual_encoder import config as run_config
    from dual_encoder.training.trainer import build_towers

    config = run_config.get_preset("lit")
    config.model.image_encoder = str(shared / "weights" / "efficientnet_lite0_keras")
    config.model.text_encoder = str(shared / "weights" / "all-minilm-l6-v2")
    if not mid_level:
        config.model.image_feature_stages = config.model.text_feature_layers = 0
    image, text, _ = build_towers(config, captions)
    return image, text


def write_shard(shared: Path, photos: int, work: Path) -> Path:
    """The first `photos` Flickr8k photos (sorted by name) with all their captions, as one shard folder."""
    from dual_encoder.cli.data import main as write_shards_cli

    table = work / "captions.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows([str(path), caption] for path, caption in flickr8k_rows(shared, photos))
    out = work / "shards"
    if write_shards_cli(["--csv", str(table), "--image-column", "image", "--caption-column", "caption",
                         "--val-fraction", "0", "--images-per-shard", "100000", "--out", str(out), "--quiet"]) != 0:
        raise RuntimeError(f"writing {out} failed (see above)")  # fmt: skip
    return out


def _as_before(variant: Variant) -> None:
    """Puts back the extraction as it was, one part at a time (this process only)."""
    import tensorflow as tf

    from dual_encoder.data import pipeline
    from dual_encoder.towers import features, frozen_graph
    from dual_encoder.training import feature_cache

    if not variant.resize_skip:
        pipeline._resize_unless_there = lambda image, size: tf.image.resize(image, size, antialias=True)
    if not variant.constant_graph:  # the tower as a tf.function over its variables
        feature_cache.frozen_graph = types.SimpleNamespace(inference_function=lambda f, signature: tf.function(
            f, input_signature=signature))  # fmt: skip
    elif not variant.folded_depthwise:  # weights as constants, left to grappler (it folds regular convs only)
        unfolded = functools.partial(frozen_graph.inference_function, fold=False)
        feature_cache.frozen_graph = types.SimpleNamespace(inference_function=unfolded)
    if not variant.caption_lengths:  # each caption at the smallest of 16, 32, 64, ... tokens that holds it
        from dual_encoder.towers.layers import TokenPooling

        takes_padding = features.pools_with_padding_mask

        def one_pooling(tower):  # the padding check as it was: a tower with one pooling layer only
            return takes_padding(tower) and sum(isinstance(layer, TokenPooling) for layer in tower.model.layers) == 1

        features.pools_with_padding_mask = one_pooling

        def doubling(longest, sequence_length, smallest=16):
            length = smallest
            while length < longest:
                length *= 2
            return int(min(length, sequence_length))

        features.batch_length = doubling


def median_run(runs: list) -> dict:
    """The run with the median extraction seconds (wall), its FLOP counts from the first run, and
    every run's images/s and captions/s."""
    ordered = sorted(runs, key=lambda r: r["extraction_seconds"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median.update({k: runs[0][k] for k in ("flops_per_image", "flops_per_caption")})
    median["images_per_second"] = median["images"] / median["image_seconds"]
    median["captions_per_second"] = median["captions"] / median["text_seconds"]
    median["runs"] = [{"images_per_second": r["images"] / r["image_seconds"],
                       "captions_per_second": r["captions"] / r["text_seconds"],
                       "extraction_seconds": r["extraction_seconds"]} for r in runs]  # fmt: skip
    return median


def _flops(tower_call, signature) -> float:
    import tensorflow as tf

    from dual_encoder import _compat

    convert = _compat._private("tensorflow.python.framework.convert_to_constants", "convert_variables_to_constants_v2")
    graph = convert(tf.function(tower_call, input_signature=signature).get_concrete_function()).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return float(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)


def worker(args) -> int:
    """One variant in this process: extract the shard's features, write them and the timings."""
    variant = VARIANTS[args.worker]
    _as_before(variant)
    import tensorflow as tf

    from dual_encoder.data import pipeline
    from dual_encoder.training import feature_cache

    shard = next(Path(args.shards).glob("train-*.tfrecord"))
    local = Path(args.scratch) / shard.name  # the cache is written beside the shard: one folder per variant
    local.symlink_to(shard)
    captions = [c for _, caps in pipeline.image_caption_lists([str(local)]) for c in caps]
    image, text = lit_towers(args.shared, variant.mid_level, captions[:2000])
    cache = feature_cache.FeatureCache(image, text, concurrent_towers=variant.concurrent_towers)
    report = cache.extract([str(local)], progress=False)
    loaded = cache.load([str(local)])
    np.savez(Path(args.scratch) / "features.npz", image=loaded.image_features, text=loaded.text_features)
    rows, seconds = report.computed_rows, report.compute_seconds
    out = {"images": rows["image"], "captions": rows["text"], "image_seconds": seconds["image"],
           "text_seconds": seconds["text"], "extraction_seconds": report.seconds,
           "text_batch_lengths": {str(k): v for k, v in sorted(report.length_buckets.items())}}  # fmt: skip
    if args.count_flops:  # the same graphs every repeat: counted on the first only
        out["flops_per_image"] = _flops(lambda x: image.model(x, training=False),
                                        [tf.TensorSpec([1, *image.image_size, 3], tf.float32)])  # fmt: skip
        names = list(text.preprocessor(tf.constant(["a"])))
        text_total = sum(n * _flops(lambda d: text.model(d, training=False), [{k: tf.TensorSpec([1, length], tf.int32)
                                                                                for k in names}])
                         for length, n in report.length_buckets.items())  # fmt: skip
        out["flops_per_caption"] = text_total / max(1, rows["text"])
    (Path(args.scratch) / "timings.json").write_text(json.dumps(out))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the shared folder (data/ and weights/)")
    parser.add_argument("--photos", type=int, default=1000, help="Flickr8k photos to extract (with their ~5 captions each)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS, help="what to measure")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "extraction_throughput.json",
                        help="results JSON")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each variant (round-robin, each in a fresh process); the table gives the median")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    needed = [args.shared / "data" / "flickr8k" / "captions.txt", args.shared / "weights" / "efficientnet_lite0_keras",
              args.shared / "weights" / "all-minilm-l6-v2"]  # fmt: skip
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"skipped: the real data and towers are not there (missing: {', '.join(missing)}); pass --shared DIR")
        return 0
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    started = time.perf_counter()
    runs, features = {name: [] for name in args.variants}, {}
    with tempfile.TemporaryDirectory() as work:
        shards = write_shard(args.shared, args.photos, Path(work))
        for repeat in range(args.repeats):
            for name in args.variants:
                scratch = Path(work) / f"{name}-{repeat}"
                scratch.mkdir()
                env = dict(os.environ)
                if VARIANTS[name].bfc_allocator:
                    env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
                print(f"[{name}, run {repeat + 1} of {args.repeats}] extracting in a fresh process ...", flush=True)
                command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--shards", str(shards),
                           "--scratch", str(scratch), "--shared", str(args.shared)]  # fmt: skip
                command += ["--count-flops"] if repeat == 0 else []
                subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
                runs[name].append(json.loads((scratch / "timings.json").read_text()))
                with np.load(scratch / "features.npz") as stored:
                    current = {k: stored[k] for k in stored.files}
                if name in features and any(not np.array_equal(features[name][k], current[k]) for k in current):
                    raise RuntimeError(f"{name}: run {repeat + 1} computed other features than run 1")
                features[name] = current
    results = {name: median_run(name_runs) for name, name_runs in runs.items()}
    peak = peak_flops()
    rows = []
    for name, r in results.items():
        feats, base = features[name], results.get(reference(name))
        if base is not None:
            reference_features = features[reference(name)]
            r["compared_with"] = reference(name)
            r["max_abs_change"] = {k: float(np.max(np.abs(feats[k] - reference_features[k]))) for k in feats}
            r["max_relative_change"] = {k: float(np.max(np.abs(feats[k] - reference_features[k]))
                                                 / np.max(np.abs(reference_features[k]))) for k in feats}  # fmt: skip
            for kind, key in (("image", "images_per_second"), ("text", "captions_per_second")):
                r[f"{kind}_speedup"] = r[key] / base[key]
            r["end_to_end_speedup"] = base["extraction_seconds"] / r["extraction_seconds"]
        for kind, per, flops in (("image", "images_per_second", "flops_per_image"), ("text", "captions_per_second",
                                                                                     "flops_per_caption")):
            r[f"{kind}_flops_per_second"] = r[per] * r[flops]
            for share, peak_name in (("share_of_peak", "flops"), ("share_of_avx512_peak", "avx512_flops")):
                r[f"{kind}_{share}"] = None if peak[peak_name] is None else r[f"{kind}_flops_per_second"] / peak[peak_name]
        rows.append(name)
    shares = "% of AVX2 / AVX-512 peak" if peak["avx512_flops"] else "% of peak"
    header = (f"| variant | images/s (range) | captions/s (range) | image GFLOP/s ({shares}) | text GFLOP/s ({shares}) | "
              "extraction seconds | end-to-end speedup | max feature change |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in rows:
        r = results[name]
        def share(kind):
            known = [r[f"{kind}_{key}"] for key in ("share_of_peak", "share_of_avx512_peak") if r[f"{kind}_{key}"] is not None]
            return f" ({' / '.join(f'{100 * x:.0f}' for x in known)} %)" if known else ""

        change = max(r.get("max_abs_change", {"-": 0.0}).values())
        spread = lambda key, digits: "–".join(f"{f(x[key] for x in r['runs']):.{digits}f}" for f in (min, max))  # noqa: E731
        lines.append(f"| {name} | {r['images_per_second']:.1f} ({spread('images_per_second', 0)}) | "
                     f"{r['captions_per_second']:.0f} ({spread('captions_per_second', 0)}) | "
                     f"{r['image_flops_per_second'] / 1e9:.1f}{share('image')} | {r['text_flops_per_second'] / 1e9:.1f}"
                     f"{share('text')} | {r['extraction_seconds']:.1f} | "
                     f"{r.get('end_to_end_speedup', 1.0):.2f}x vs {r.get('compared_with', name)} | {change:.1e} |")  # fmt: skip
    table = "\n".join(lines)
    any_run = results[rows[0]]
    peak_text = "unknown" if peak["flops"] is None else f"{peak['flops'] / 1e9:.0f} GFLOP/s"
    summary = (f"{any_run['images']} images, {any_run['captions']} captions; EfficientNet-Lite0 "
               f"{any_run['flops_per_image'] / 1e9:.3f} GFLOP/image, all-MiniLM-L6-v2 {any_run['flops_per_caption'] / 1e9:.3f} "
               f"GFLOP/caption as run; peak {peak_text} "
               f"({peak['cores']} cores x {peak['mhz']} MHz x {FLOP_PER_CYCLE} FLOP/cycle, AVX2 FMA)"
               + ("" if peak["avx512_flops"] is None else
                  f"; this CPU has AVX-512 too, which oneDNN uses: against its {peak['avx512_flops'] / 1e9:.0f} GFLOP/s "
                  f"({AVX512_FLOP_PER_CYCLE} FLOP/cycle) the shares halve (second figure)")
               + f"; median of {args.repeats} runs per variant")  # fmt: skip
    output = {"benchmark": "extraction_throughput", "command": ["benchmarks/extraction_throughput.py",
                                                                *(argv if argv is not None else sys.argv[1:])],
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
              "peak": peak, "photos": args.photos, "repeats": args.repeats,
              "variants": {k: v._asdict() for k, v in VARIANTS.items() if k in results},
              "results": results, "table": table, "summary": summary,
              "total_seconds": time.perf_counter() - started}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(files.portable_paths(json.loads(json.dumps(output, default=str))), indent=2))
    print("\n" + summary + "\n\n" + table + f"\n\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
