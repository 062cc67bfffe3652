#!/usr/bin/env python
"""Search latency of the index backends (exact, HNSW, IVF-PQ) at growing sizes, and their recall@10 against exact.

  python benchmarks/search_latency.py --sizes 10000 100000 1000000 --output benchmarks/results/search_latency.json
  python benchmarks/search_latency.py --sizes 10000 100000 --backends exact hnsw   # a quick look; writes nothing
  python benchmarks/search_latency.py --sizes 100000 --ef-construction 40 --seed 1  # tuning (on another seed)

The backends are the product's: `ExactBackend` and `FaissBackend.build(name, vectors, BackendConfig())`,
what `evaluate.py index` builds, searched through their `search` (no separate FAISS code here).

Data (all seeded; which one is recorded in the JSON's "data"):
- clusters (at --sizes): a mixture of `--centres` 4096 clusters on the unit sphere in `--dim`
  dimensions. Centres are uniform on the sphere; a point is a uniformly chosen centre plus
  Gaussian noise of total norm ~`--spread` 0.75, L2-normalised, so a point's cosine to its centre
  is ~0.8. The noise has a power-law spectrum, variance ~ j^-1 along the j-th of random
  orthonormal directions (`--noise-decay`), as learned embeddings have: it spans ~23 effective
  dimensions of 256. Queries are drawn from the same mixture but are not in the index (like text
  queries near the data), the same queries at every size.
- isotropic (at --hard-sizes): the same clusters with isotropic noise spanning all 256
  dimensions, for comparison: a cluster's points are then all about equally far from a query
  (near-ties in its top 10). Harder for IVF-PQ; HNSW does about as well as on `clusters`.
- uniform (at --hard-sizes): the worst case, points and queries uniform on the sphere.

Per data set, size and backend:
- build_seconds: building the backend from the vectors (FAISS: IVF/PQ training included);
- bytes_per_vector: the size of the backend's saved file (`backend.save`) / vectors;
- ms_per_64_queries: one top-10 search of 64 queries, median of --repeats batches (each a
  different 64 of the query set) after one warm-up batch;
- recall_at_10: the share of exact search's top 10 that the backend returns, mean over all
  --queries queries (`backends.recall_at`'s measure, with exact's answers computed once);
- speedup_vs_exact: exact's ms_per_64_queries over this row's, same data and size, same run;
- ms_per_64_queries_1_thread: the same with one FAISS thread (the table's "1 thread").
HNSW is also timed at each --ef-sweep efSearch and IVF-PQ at each --nprobe-sweep, each at every
thread count from 1 to the core count (FAISS OpenMP threads), so the trade-off is on record.

Other work may share the CPU: the load average at the start and end, and the CPU share other
processes took while each row was timed (/proc/stat), go into the JSON; before timing each row
and each sweep the benchmark waits up to --quiet-wait s for others to use at most --quiet cores.
"""

from __future__ import annotations

import dual_encoder.cli  # noqa: F401  (first: the tools' TensorFlow defaults; the backends' package loads TensorFlow)

# isort: split
import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import faiss
import numpy as np
from machine_load import OtherCpu

from dual_encoder.search.backends import HNSW_STORAGE, BackendConfig, ExactBackend, FaissBackend

ROOT = Path(__file__).resolve().parents[1]

TOP_K, BATCH = 10, 64
BACKEND_NAMES = ("exact", "hnsw", "ivfpq")
DATA = ("clusters", "isotropic", "uniform")
TARGET = {"size": 1_000_000, "backend": "hnsw", "ms_per_64_queries_at_most": 10.0, "recall_at_10_at_least": 0.95}
CHUNK = 100_000  # vectors generated at once (bounds the float32 scratch memory)


# --- data ----------------------------------------------------------------------------------------


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noise_spectrum(dim: int, spread: float, decay: float) -> np.ndarray:
    """Per-direction noise variances j^-decay (j = 1..dim), summing to spread**2 (decay 0: isotropic)."""
    variances = np.arange(1, dim + 1, dtype=np.float64) ** -decay
    return variances * spread**2 / variances.sum()


def effective_dim(variances: np.ndarray) -> float:
    """The participation ratio (sum v)^2 / sum v^2: how many directions the noise really spans."""
    return float(variances.sum() ** 2 / (variances**2).sum())


def mixture(n: int, centres: np.ndarray, noise: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n points: a uniformly chosen centre each plus Gaussian noise `g @ noise`, L2-normalised (float32)."""
    out = np.empty((n, centres.shape[1]), np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        gaussian = rng.standard_normal((stop - start, centres.shape[1]), dtype=np.float32)
        out[start:stop] = _normalised(centres[rng.integers(0, len(centres), stop - start)] + gaussian @ noise)
    return out


def uniform(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        out[start:stop] = _normalised(rng.standard_normal((stop - start, dim), dtype=np.float32))
    return out


def make_data(kind: str, n: int, args) -> tuple[np.ndarray, np.ndarray]:
    """(vectors [n, dim], queries [--queries, dim]) of one data set. Separate seeded streams for the
    centres and noise directions, the queries and the stored vectors: the same queries at every size."""
    vectors_rng, queries_rng = np.random.default_rng([args.seed, 2]), np.random.default_rng([args.seed, 1])
    if kind == "uniform":
        return uniform(n, args.dim, vectors_rng), uniform(args.queries, args.dim, queries_rng)
    rng = np.random.default_rng([args.seed, 0])
    centres = _normalised(rng.standard_normal((args.centres, args.dim), dtype=np.float32))
    basis = np.linalg.qr(rng.standard_normal((args.dim, args.dim)))[0]  # random orthonormal noise directions
    decay = args.noise_decay if kind == "clusters" else 0.0
    noise = (np.sqrt(noise_spectrum(args.dim, args.spread, decay))[:, None] * basis.T).astype(np.float32)
    return mixture(n, centres, noise, vectors_rng), mixture(args.queries, centres, noise, queries_rng)


def describe_data(plan, args) -> dict:
    sizes = {kind: [size for k, size in plan if k == kind] for kind, _ in plan}
    common = {"centres": args.centres, "spread": args.spread, "dim": args.dim, "seed": args.seed}
    text = ("mixture of clusters on the unit sphere: a uniformly chosen centre (centres uniform on the sphere) + "
            "Gaussian noise of total norm ~spread, L2-normalised; queries drawn from the same mixture, not in the index; ")
    described = {}
    if "clusters" in sizes:
        variances = noise_spectrum(args.dim, args.spread, args.noise_decay)
        described["clusters"] = {
            "description": text + f"noise variance j^-{args.noise_decay:g} along the j-th of random orthonormal directions "
                                  "(a power-law spectrum, as learned embeddings have)",
            **common, "noise_decay": args.noise_decay, "noise_effective_dim": effective_dim(variances),
            "sizes": sizes["clusters"]}
    if "isotropic" in sizes:
        described["isotropic"] = {
            "description": text + "isotropic noise spanning every dimension (for comparison)",
            **common, "noise_decay": 0.0, "noise_effective_dim": float(args.dim), "sizes": sizes["isotropic"]}
    if "uniform" in sizes:
        described["uniform"] = {"description": "worst case: stored vectors and queries uniform on the unit sphere (no structure)",
                                "dim": args.dim, "seed": args.seed, "sizes": sizes["uniform"]}
    return described


# --- measuring -----------------------------------------------------------------------------------


def batch_ms(backend, queries: np.ndarray, repeats: int) -> dict:
    """Milliseconds of one top-10 search of 64 queries: a warm-up batch, then `repeats` others."""
    batches = [queries[(i * BATCH) % len(queries):][:BATCH] for i in range(repeats + 1)]
    backend.search(batches[0], TOP_K)
    others, times = OtherCpu(), []
    for batch in batches[1:]:
        start = time.perf_counter()
        backend.search(batch, TOP_K)
        times.append(1000 * (time.perf_counter() - start))
    return {"ms_per_64_queries": statistics.median(times), "ms_all": [round(t, 3) for t in times],
            "other_processes_cpu_share": others.share()}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |exact top-k & found| / k (`backends.recall_at`'s measure)."""
    return float(np.mean([len(set(t) & set(f)) / max(1, len(t)) for t, f in zip(truth.tolist(), found.tolist())]))


def saved_bytes(backend) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "backend.bin")
        backend.save(path)
        return os.path.getsize(path)


def faiss_threads(count: Optional[int]) -> None:
    """FAISS's OpenMP threads for what follows (None: one per core, FAISS's default)."""
    faiss.omp_set_num_threads(count or os.cpu_count() or 1)


def wait_for_quiet(args) -> float:
    """Waits (at most --quiet-wait s) until other processes use at most --quiet cores over a second;
    returns the seconds waited."""
    started = time.perf_counter()
    while True:
        others = OtherCpu()
        time.sleep(1.0)
        share = others.share()
        if share is None or share <= args.quiet or time.perf_counter() - started >= args.quiet_wait:
            return time.perf_counter() - started


def sweep(kind: str, size: int, backend, field: str, values, config: BackendConfig, queries, truth, args) -> list:
    """The same FAISS index re-tuned (a new FaissBackend over it, as loading applies the config) at each
    value of `field`, at every thread count."""
    rows, waited = [], wait_for_quiet(args)
    for value in values:
        tuned = FaissBackend(backend.name, backend.index, dataclasses.replace(config, **{field: value}))
        faiss_threads(args.threads)
        found = tuned.search(queries, TOP_K)[1]
        for threads in range(1, (os.cpu_count() or 1) + 1):
            faiss_threads(threads)
            timing = batch_ms(tuned, queries, args.repeats)
            rows.append({"data": kind, "size": size, "backend": backend.name, field: value, "threads": threads,
                         "ms_per_64_queries": timing["ms_per_64_queries"], "recall_at_10": recall(found, truth),
                         "other_processes_cpu_share": timing["other_processes_cpu_share"], "quiet_wait_seconds": waited})
            waited = 0.0
    faiss_threads(args.threads)
    return rows


def run_size(kind: str, size: int, args, config: BackendConfig) -> tuple[list, dict]:
    """The rows of one data set at one size, and its sweeps."""
    vectors, queries = make_data(kind, size, args)
    exact = ExactBackend(vectors)
    started = time.perf_counter()
    truth = exact.search(queries, TOP_K)[1]
    truth_seconds = time.perf_counter() - started
    rows, sweeps = [], {"hnsw_ef_sweep": [], "ivfpq_nprobe_sweep": []}
    for name in args.backends:
        faiss_threads(None)  # builds use every core
        gc.collect()
        started = time.perf_counter()
        backend = exact if name == "exact" else FaissBackend.build(name, vectors, config)
        build_seconds = time.perf_counter() - started
        faiss_threads(args.threads)
        waited = wait_for_quiet(args)
        timing = batch_ms(backend, queries, args.repeats)
        one_thread = None
        if name != "exact" and (os.cpu_count() or 1) > 1 and args.threads != 1:
            faiss_threads(1)
            one_thread = batch_ms(backend, queries, args.repeats)["ms_per_64_queries"]
            faiss_threads(args.threads)
        found = backend.search(queries, TOP_K)[1] if name != "exact" else truth
        row = {"data": kind, "size": size, "backend": name, "ms_per_64_queries": timing["ms_per_64_queries"],
               "recall_at_10": recall(found, truth), "build_seconds": build_seconds,
               "bytes_per_vector": saved_bytes(backend) / size, "speedup_vs_exact": None,
               "threads": args.threads or os.cpu_count(), "ms_per_64_queries_1_thread": one_thread, "ms_all": timing["ms_all"],
               "other_processes_cpu_share": timing["other_processes_cpu_share"], "quiet_wait_seconds": waited}
        if name == "exact":
            row["build_seconds_note"] = f"nothing to build; exact top-10 of all {len(queries)} queries took {truth_seconds:.2f} s"
        elif name == "hnsw":
            row["parameters"] = {"M": config.hnsw_m, "efConstruction": config.hnsw_ef_construction,
                                 "efSearch": config.hnsw_ef_search, "storage": config.hnsw_storage}
            sweeps["hnsw_ef_sweep"] = sweep(kind, size, backend, "hnsw_ef_search", args.ef_sweep, config, queries, truth, args)
        else:
            row["parameters"] = {"nlist": int(backend.index.nlist), "nprobe": int(backend.index.nprobe),
                                 "pq_subvectors": int(backend.index.pq.M), "pq_bits": int(backend.index.pq.nbits)}
            sweeps["ivfpq_nprobe_sweep"] = sweep(kind, size, backend, "ivf_probes", args.nprobe_sweep, config, queries,
                                                 truth, args)
        rows.append(row)
        print_row(row)
        if backend is not exact:
            del backend
    exact_ms = next((r["ms_per_64_queries"] for r in rows if r["backend"] == "exact"), None)
    for row in rows:
        row["speedup_vs_exact"] = exact_ms / row["ms_per_64_queries"] if exact_ms else None
    del exact, vectors
    gc.collect()
    return rows, sweeps


# --- output --------------------------------------------------------------------------------------

HEADER = (f"| {'data':<9} | {'size':>9} | {'backend':<7} | {'ms / 64 q':>9} | {'1 thread':>8} | {'x exact':>7} | "
          f"{'recall@10':>9} | {'build s':>7} | {'bytes/vec':>9} |")


def print_row(row: dict, final: bool = False) -> None:
    if not final:  # progress while the run goes on; the table comes at the end
        print(f"  {row['data']} {row['size']:,} {row['backend']}: {row['ms_per_64_queries']:.2f} ms / 64 queries, "
              f"recall@10 {row['recall_at_10']:.4f}, build {row['build_seconds']:.1f} s", flush=True)
        return
    speedup = row["speedup_vs_exact"]
    speedup = "-" if speedup is None else f"{speedup:.1f}" if speedup < 10 else f"{speedup:.0f}"
    one = "-" if row["ms_per_64_queries_1_thread"] is None else f"{row['ms_per_64_queries_1_thread']:.2f}"
    print(f"| {row['data']:<9} | {row['size']:>9,} | {row['backend']:<7} | {row['ms_per_64_queries']:>9.2f} | {one:>8} | "
          f"{speedup:>7} | {row['recall_at_10']:>9.4f} | {row['build_seconds']:>7.1f} | {row['bytes_per_vector']:>9.1f} |")


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")),
               platform.processor()) if cpuinfo.exists() else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "faiss": faiss.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "faiss_omp_max_threads": faiss.omp_get_max_threads()}


def relative(path: str) -> str:
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else resolved.name


def parse_args(argv=None) -> argparse.Namespace:
    defaults = BackendConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="stored vectors (default: %(default)s)")
    parser.add_argument("--backends", nargs="+", choices=BACKEND_NAMES, default=list(BACKEND_NAMES),
                        help="backends to measure (default: all; speed-ups need exact)")
    parser.add_argument("--data", nargs="+", choices=DATA, default=list(DATA),
                        help="data sets: clusters at --sizes, the harder isotropic and uniform at --hard-sizes "
                             "(default: %(default)s)")
    parser.add_argument("--hard-sizes", type=int, nargs="*", default=None,
                        help="sizes of the isotropic and uniform rows (default: the largest of --sizes; give none to skip)")
    parser.add_argument("--repeats", type=int, default=7, help="timed 64-query batches, after one warm-up (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=1024,
                        help="queries for recall@10, also the pool of timed batches (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=256, help="embedding size (default: %(default)s, the project's)")
    parser.add_argument("--centres", type=int, default=4096, help="clusters in the mixture (default: %(default)s)")
    parser.add_argument("--spread", type=float, default=0.75,
                        help="norm of a point's noise around its unit centre, before normalising (default: %(default)s)")
    parser.add_argument("--noise-decay", type=float, default=1.0,
                        help="clusters: noise variance j^-DECAY along the j-th direction (default: %(default)s; 0: isotropic)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s; tuning used another)")
    parser.add_argument("--threads", type=int, default=None,
                        help="FAISS OpenMP threads for search (default: one per core, FAISS's default); builds use all")
    parser.add_argument("--hnsw-m", type=int, default=defaults.hnsw_m, help="HNSW M (default: BackendConfig's, %(default)s)")
    parser.add_argument("--ef-construction", type=int, default=defaults.hnsw_ef_construction,
                        help="HNSW efConstruction (default: BackendConfig's, %(default)s)")
    parser.add_argument("--hnsw-storage", choices=HNSW_STORAGE, default=defaults.hnsw_storage,
                        help="what HNSW keeps of each vector (default: BackendConfig's, %(default)s)")
    parser.add_argument("--ef-search", type=int, default=defaults.hnsw_ef_search,
                        help="HNSW efSearch of the main rows (default: BackendConfig's, %(default)s)")
    parser.add_argument("--nprobe", type=int, default=defaults.ivf_probes,
                        help="IVF lists probed in the main rows (default: BackendConfig's, %(default)s)")
    parser.add_argument("--ef-sweep", type=int, nargs="*", default=[32, 40, 48, 56, 64, 128],
                        help="efSearch values HNSW is also timed at (default: %(default)s)")
    parser.add_argument("--nprobe-sweep", type=int, nargs="*", default=[8, 16, 32, 64],
                        help="nprobe values IVF-PQ is also timed at (default: %(default)s)")
    parser.add_argument("--quiet", type=float, default=0.25,
                        help="before timing each row and each sweep, wait for other processes to use at most this many "
                             "cores (over 1 s; default: %(default)s)")
    parser.add_argument("--quiet-wait", type=float, default=60,
                        help="longest such wait, s (default: %(default)s; 0: time at once)")
    parser.add_argument("--output", help="JSON file to write (default: none, the table only)")
    args = parser.parse_args(argv)
    if args.hard_sizes is None:
        args.hard_sizes = [max(args.sizes)]
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    config = dataclasses.replace(BackendConfig(), hnsw_m=args.hnsw_m, hnsw_ef_construction=args.ef_construction,
                                 hnsw_ef_search=args.ef_search, ivf_probes=args.nprobe, hnsw_storage=args.hnsw_storage)
    plan = [(kind, size) for kind in args.data for size in (args.sizes if kind == "clusters" else args.hard_sizes)]
    load_at_start, started, info = os.getloadavg(), time.perf_counter(), machine()
    print(f"Search latency: {len(plan)} data set sizes x {', '.join(args.backends)}, {args.dim}-d, {info['cores']} cores, "
          f"load average {load_at_start[0]:.2f}", flush=True)
    results, sweeps = [], {"hnsw_ef_sweep": [], "ivfpq_nprobe_sweep": []}
    for kind, size in plan:
        rows, size_sweeps = run_size(kind, size, args, config)
        results += rows
        for key, values in size_sweeps.items():
            sweeps[key] += values
    load_at_end, seconds = os.getloadavg(), time.perf_counter() - started

    threads = args.threads or info["cores"]
    print(f"\nTop-10 search of 64 queries, {args.dim}-d, {info['cores']} cores ({info['cpu']}), FAISS {info['faiss']} "
          f"with {threads} search thread(s); median of {args.repeats} batches; recall@10 against exact over {args.queries} "
          f"queries; load average {load_at_start[0]:.2f} -> {load_at_end[0]:.2f}")
    print(HEADER)
    print("|" + "|".join("-" * len(cell) for cell in HEADER.split("|")[1:-1]) + "|")
    for row in results:
        print_row(row, final=True)
    target = next((r for r in results if (r["data"], r["size"], r["backend"]) == ("clusters", TARGET["size"], TARGET["backend"])),
                  None)
    met = None if target is None else (target["ms_per_64_queries"] <= TARGET["ms_per_64_queries_at_most"]
                                       and target["recall_at_10"] >= TARGET["recall_at_10_at_least"])
    if target is not None:
        print(f"\ntarget at 1M (hnsw, clusters): <= {TARGET['ms_per_64_queries_at_most']:g} ms / 64 queries at recall@10 >= "
              f"{TARGET['recall_at_10_at_least']}: {'met' if met else 'NOT met'} ({target['ms_per_64_queries']:.2f} ms, "
              f"{target['recall_at_10']:.4f})")
    print(f"total {seconds:.0f} s, peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
    if args.output:
        output = relative(args.output)
        command = ["benchmarks/search_latency.py", *(output if a == args.output else a for a in argv)]
        report = {
            "benchmark": "search_latency", "command": command, "output": output,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "data": describe_data(plan, args), "machine": info,
            "load_average_at_start": load_at_start, "load_average_at_end": load_at_end, "seconds": seconds,
            "peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "repeats": args.repeats, "queries": args.queries, "top_k": TOP_K, "batch": BATCH,
            "search_threads": threads, "backend_config": dataclasses.asdict(config),
            "target": {**TARGET, "met": met}, "results": results, **sweeps,
        }
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
