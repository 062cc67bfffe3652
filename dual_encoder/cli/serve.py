"""evaluate.py serve: a search page and HTTP API over a photo folder, indexed first where needed.

  python evaluate.py serve --model runs/sample --images DIR          # http://127.0.0.1:8000
  python evaluate.py serve --model runs/sample --images DIR --index photos.index --port 8080

The logic lives in dual_encoder.search (index.build_index, service.create_app); this module
parses the flags, checks them before the model loads, and prints where the page is.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

from dual_encoder import config as run_config
from dual_encoder import files
from dual_encoder.cli import flags
from dual_encoder.cli.evaluate import CACHE_DIR_HELP, _embedder_and_cache, add_embedding_arguments
from dual_encoder.cli.help import HelpFormatter

# Checked by run() before the port is taken or the model loads; the bounds show in --help.
SERVE_BOUNDS = {
    "port": run_config.Bounds(0, 65535),
    "max_k": run_config.Bounds(1, 10_000),
    "max_upload_mb": run_config.Bounds(0, 1024, low_open=True, integer=False),
}


def build_parser() -> argparse.ArgumentParser:
    from dual_encoder.search import BACKENDS
    from dual_encoder.search.service import MiB, ServiceConfig

    defaults = ServiceConfig()
    parser = argparse.ArgumentParser(
        prog="evaluate.py serve",
        description="A search page and HTTP API over a photo folder. The folder is indexed first (only new or changed "
        "files are embedded), then served with FastAPI + uvicorn: GET / (the page; /?q=TEXT opens a query), "
        "GET /api/search?q=TEXT&k=K, POST /api/search/image?k=K (multipart field 'file'), GET /api/similar/ID?k=K, "
        "GET /api/images/ID, GET /healthz. Bad requests get a 4xx JSON {\"error\": ...}.",
        epilog=f"Limits per request: k in [1, --max-k], required (the page asks for {defaults.page_k}), queries up to "
        f"{defaults.max_query_chars:,} characters, uploads up to --max-upload-mb MiB and "
        f"{defaults.max_upload_pixels:,} pixels. Running evaluate.py index on the same --index while serving is "
        "safe: the server picks the new index up within a second, whole.",
        formatter_class=HelpFormatter,
    )
    what = parser.add_argument_group("what to serve")
    what.add_argument("--model", required=True, metavar="PATH_OR_PRESET",
                      help="training output folder (with saved_model/), exported SavedModel, or keras-hub CLIP/SigLIP "
                      "preset name or local preset directory; the index is this model's")  # fmt: skip
    what.add_argument("--images", required=True, metavar="DIR", help="folder of images (sub-folders included)")
    what.add_argument("--index", metavar="PATH",
                      help="the index folder, built or updated before serving (default: a folder in --cache-dir named "
                      "by a hash of the images folder and the model; with --no-cache a temporary one)")  # fmt: skip
    what.add_argument("--backend", choices=BACKENDS, default="auto",
                      help="exact search, or FAISS HNSW / IVF-PQ (faiss: HNSW up to 20 million "
                        "images, IVF-PQ beyond); auto picks by size (exact below 20,000 images)")
    what.add_argument("--rebuild", action="store_true", help="index again from scratch, e.g. an --index of another --model")
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on; 0.0.0.0 opens the page to the network (there is no login)")
    net.add_argument("--port", type=int, default=8000,
                     help="port to listen on; 0 picks a free one" + flags.range_help(SERVE_BOUNDS["port"]))
    net.add_argument("--max-k", type=int, default=defaults.max_k, metavar="K",
                     help="most results one request may ask for" + flags.range_help(SERVE_BOUNDS["max_k"]))
    net.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes // MiB, metavar="MB",
                     help="largest photo POST /api/search/image accepts, in MiB (larger: 413)"
                     + flags.range_help(SERVE_BOUNDS["max_upload_mb"]))
    model = parser.add_argument_group("model and cache")
    add_embedding_arguments(model, cache_dir_help=f"{CACHE_DIR_HELP}; also where the index goes when --index is left out",
                            no_cache_help="neither read nor write the embedding cache (without --index: a temporary index)")
    return parser


def default_index_path(cache_dir, images, fingerprint: str) -> Path:
    """Inside the cache folder, one index per (images folder, model): nothing lands outside named folders."""
    digest = files.json_digest({"images": str(Path(images).resolve()), "model": fingerprint}, "sha1", 16)
    return Path(cache_dir) / f"index-{digest}"


@contextlib.contextmanager
def _index_folder(args, fingerprint: str) -> Iterator[Path]:
    """--index, else the cache's index folder, else (--no-cache) a temporary folder removed on exit."""
    if args.index:
        yield Path(args.index)
    elif not args.no_cache:
        yield default_index_path(args.cache_dir, args.images, fingerprint)
    else:
        with tempfile.TemporaryDirectory(prefix="dual-encoder-index-") as folder:
            yield Path(folder) / "index"


def run(args) -> None:
    from dual_encoder.evaluation import runs
    from dual_encoder.search.service import MiB, ServiceConfig, bind, create_app, serve, url_of

    flags.check_flags(args, SERVE_BOUNDS)
    config = ServiceConfig(page_k=min(ServiceConfig.page_k, args.max_k), max_k=args.max_k,
                           max_upload_bytes=max(1, int(args.max_upload_mb * MiB)))
    runs.list_images(args.images)  # a bad folder fails before the port is taken or the model loads
    sock = bind(args.host, args.port)  # a port in use fails now, not after indexing
    try:
        embedder, cache = _embedder_and_cache(args)
        with _index_folder(args, embedder.fingerprint()) as index_path:
            _update_index(args, embedder, cache, index_path)
            embedder.progress = False  # requests log no progress bars
            app = create_app(embedder, index_path, config)
            print(f"serving the search page at {url_of(sock)} (Ctrl+C stops)", flush=True)
            try:
                serve(app, sock)
            except KeyboardInterrupt:  # uvicorn stops gracefully, then raises the Ctrl+C again: here the usual end
                print("stopped", flush=True)
    finally:
        sock.close()


def _update_index(args, embedder, cache, index_path: Path) -> None:
    """Embeds only what the index lacks (the embedding cache first), and says what it did."""
    from dual_encoder.search import build_index

    _, report = build_index(embedder, args.images, index_path, args.backend, args.rebuild, cache=cache)
    skipped = sum(report["skipped"].values())
    print(f"indexed {report['images']} images into {index_path} ({report['embedded']} embedded, {report['reused']} "
          f"reused, {report['removed']} removed, {skipped} unreadable skipped); backend {report['backend']}", flush=True)
