#!/usr/bin/env python
"""Loopback load on the search service: N clients x M text queries against `evaluate.py serve`.

  python benchmarks/search_service_load.py --clients 8 --queries-per-client 200 \
      --output benchmarks/results/search_service_load.json

Starts the real server (`python evaluate.py serve`, a separate process, bound to 127.0.0.1 on a
free port), waits for /healthz, then runs the clients in threads, each on its own keep-alive
HTTP connection, each query different (the text encoder runs every time). Every answer is
checked (status 200, `k` results, best first); an error is any other answer. Prints queries/s,
p50 / p99 latency and the error count (which must be 0: the exit code is 1 otherwise), with the
machine's core count; the server is stopped at the end, whatever happens.

Without --model it measures the service around the tiny colour model of dual_encoder.testing
(text encoding is nearly free, so the figures are the HTTP stack, the lock and the index) over
--photos generated pictures; pass --model RUN --images DIR to measure a real model.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORDS = ["red", "blue", "green", "a red thing", "something blue", "green leaves", "a photo of a red car",
         "blue sky", "dark green", "bright red paint"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (threads, one connection each)")
    parser.add_argument("--queries-per-client", type=int, default=200, help="queries each client sends, one after another")
    parser.add_argument("--k", type=int, default=10, help="results asked for per query")
    parser.add_argument("--model", help="model to serve (a run folder or SavedModel); default: the tiny colour model")
    parser.add_argument("--images", help="photo folder to serve (needed with --model); default: generated pictures")
    parser.add_argument("--photos", type=int, default=2000, help="generated pictures when --images is not given")
    parser.add_argument("--startup-timeout", type=float, default=300, help="seconds to wait for the server's /healthz")
    parser.add_argument("--output", help="write the figures as JSON here (e.g. benchmarks/results/search_service_load.json)")
    return parser


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def generated_collection(work: Path, photos: int) -> tuple[str, str]:
    from PIL import Image

    from dual_encoder.testing import build_colour_saved_model, colour_image

    model = build_colour_saved_model(work / "model" / "saved_model")
    rng = np.random.default_rng(0)
    for i in range(photos):
        colour = ("red", "blue", "green")[i % 3]
        folder = work / "photos" / colour
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colour_image(colour, rng)).save(folder / f"{i}.png")
    return str(model), str(work / "photos")


def wait_for_health(port: int, server: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server ended with exit code {server.returncode} before answering /healthz")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/healthz")
            answer = connection.getresponse()
            if answer.status == 200:
                return json.loads(answer.read())
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer /healthz within {timeout:.0f} s")


def run_client(port: int, client: int, count: int, k: int, latencies: list, errors: list) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for i in range(count):
        query = f"{WORDS[(client + i) % len(WORDS)]} {client}-{i}"  # never the same text twice
        started = time.perf_counter()
        try:
            connection.request("GET", "/api/search?" + urllib.parse.urlencode({"q": query, "k": k}))
            answer = connection.getresponse()
            body = answer.read()
            latencies.append(time.perf_counter() - started)
            results = json.loads(body).get("results", []) if answer.status == 200 else None
            scores = [r["score"] for r in results or []]
            if answer.status != 200 or len(results) != k or scores != sorted(scores, reverse=True):
                errors.append(f"client {client} query {i}: HTTP {answer.status} {body[:120]!r}")
        except (OSError, http.client.HTTPException, ValueError) as error:
            errors.append(f"client {client} query {i}: {type(error).__name__}: {error}")
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.close()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if (args.model is None) != (args.images is None):
        raise SystemExit("pass --model and --images together (or neither, for the generated collection)")
    with tempfile.TemporaryDirectory() as work:
        model, images = (args.model, args.images) if args.model else generated_collection(Path(work), args.photos)
        port = free_port()
        command = [sys.executable, str(REPO / "evaluate.py"), "serve", "--model", model, "--images", images,
                   "--port", str(port), "--cache-dir", str(Path(work) / "cache")]
        log = open(Path(work) / "server.log", "w")  # a file, not a pipe: an unread pipe would stall the server
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            health = wait_for_health(port, server, args.startup_timeout)
            latencies, errors = [], []
            run_client(port, -1, 10, args.k, [], [])  # warm-up: the first query traces the text encoder
            threads = [threading.Thread(target=run_client, args=(port, c, args.queries_per_client, args.k, latencies, errors))
                       for c in range(args.clients)]
            load_before, started = os.getloadavg(), time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
            if server.returncode not in (0, -15):
                print((Path(work) / "server.log").read_text()[-3000:], file=sys.stderr)
    ms = np.asarray(latencies) * 1000
    total = args.clients * args.queries_per_client
    figures = {
        "clients": args.clients, "queries_per_client": args.queries_per_client, "k": args.k, "queries": total,
        "queries_per_s": total / wall, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()), "errors": len(errors), "wall_s": wall, "index_size": health.get("images"),
        "model": "tiny colour model (dual_encoder.testing)" if args.model is None else os.path.relpath(model, REPO),
        "cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "python": platform.python_version(), "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/search_service_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"search service on 127.0.0.1, {os.cpu_count()} CPU cores, index of {figures['index_size']} images, "
          f"{args.clients} clients x {args.queries_per_client} queries (k={args.k})")
    print("| queries/s | p50 ms | p99 ms | max ms | errors |\n|---:|---:|---:|---:|---:|")
    print(f"| {figures['queries_per_s']:.0f} | {figures['p50_ms']:.1f} | {figures['p99_ms']:.1f} | "
          f"{figures['max_ms']:.1f} | {len(errors)} |")
    for line in errors[:5]:
        print("error:", line)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
