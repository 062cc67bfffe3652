"""The search service: an HTTP API and a web page over one index folder, for the model that built it.

    GET  /api/search?q=TEXT&k=K     images for a text, best first
    POST /api/search/image?k=K      multipart field `file`: the indexed images most like that photo
    GET  /api/similar/ID?k=K        the indexed images most like indexed image ID (its stored vector,
                                    no re-embedding), the image itself left out
    GET  /api/images/ID             the image's bytes with their content type (indexed files only)
    GET  /healthz                   index size, model, backend and these limits
    GET  /                          the page (static/: plain HTML, CSS and JS, no external resource);
                                    /?q=TEXT opens with that query's results, /?similar=ID with an image's

Every search answers {"query" or "similar_to" or "upload": ..., "results": [{"id", "score", "url",
"path"}, ...]}; `path` is relative to the indexed folder (with "/"), `url` is /api/images/ID.
An id is the first 16 hex digits of the sha1 of that relative path: stable across rebuilds and
never a path, so no request names a file; a file is served only if its real path (symlinks
resolved) lies inside the real indexed folder.

Limits (`ServiceConfig`; `evaluate.py serve` sets max_k and the upload size): k is an integer in
[1, 200] and required (the page asks for 24); a query is at most 1,000 characters; an upload at most 10 MiB (413
beyond, checked on Content-Length and again while reading, so a body is never read unbounded)
and 50 million pixels (413, checked before decoding: a small PNG can inflate to gigabytes).
Every refusal is a 4xx JSON {"error": "..."} naming the parameter and the limit: 400 for a bad
parameter or form, 404 for an unknown id or route, 403 for a file that resolves outside the
folder, 405 for a wrong method, 413 for too large, 415 for an upload that is not an image.

Serving while `evaluate.py index` updates the folder: each request works on one immutable
snapshot. At most once a second (`reload_interval_s`) a request checks the manifest's stat; a
changed one is loaded fully, checked to be unchanged meanwhile, then swapped in by one reference
assignment. A snapshot that fails to load or belongs to another model is logged and the old one
kept. The model is shared by all requests behind one lock (a SavedModel call at a time); searching
a snapshot only reads it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import logging
import mimetypes
import os
import socket
import threading
import time
import warnings
from concurrent.futures import Future
from pathlib import Path, PurePath
from typing import Optional

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from dual_encoder.data.images import MissingImageError, UndecodableImageError
from dual_encoder.errors import InvalidArgumentError
from dual_encoder.evaluation.embedders import load_rgb
from dual_encoder.search.index import MANIFEST, IndexMismatchError, PhotoIndex, load_index

logger = logging.getLogger(__name__)

MiB = 1 << 20
STATIC = Path(__file__).resolve().parent / "static"
ID_PATTERN = "^[0-9a-f]{16}$"
FORM_OVERHEAD = 64 << 10  # multipart boundaries and part headers around the file itself
TEXT_BATCH = 32  # text queries embedded in one call at most
DECODING_AT_ONCE = 4  # uploads decoded at once: a 50-megapixel photo holds ~150 MB while it decodes
MAX_REQUEST_LINE = 64 << 10  # uvicorn's h11 default (16 KiB) would answer a long query with plain text
_MIME_FIXES = {"image/mpo": "image/jpeg"}  # phones' multi-picture JPEGs: browsers know them as JPEG
_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
             b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'")]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """What one request may ask for. k is required (a request without it is refused, as the API
    contract says) unless `default_k` gives one; `page_k` is how many results the page asks for."""

    default_k: Optional[int] = None
    page_k: int = 24
    max_k: int = 200
    max_query_chars: int = 1000
    max_upload_bytes: int = 10 * MiB
    max_upload_pixels: int = 50_000_000
    reload_interval_s: float = 1.0

    def __post_init__(self):
        for name in ("max_k", "max_query_chars", "max_upload_bytes", "max_upload_pixels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InvalidArgumentError(f"ServiceConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.default_k is not None and not (isinstance(self.default_k, int) and 1 <= self.default_k <= self.max_k):
            raise InvalidArgumentError(f"ServiceConfig.default_k must be None or an integer in [1, {self.max_k}] "
                                       f"(max_k), got {self.default_k!r}")
        if not (isinstance(self.page_k, int) and self.page_k >= 1):
            raise InvalidArgumentError(f"ServiceConfig.page_k must be an integer >= 1, got {self.page_k!r}")
        if not self.reload_interval_s >= 0:
            raise InvalidArgumentError(f"ServiceConfig.reload_interval_s must be >= 0, got {self.reload_interval_s!r}")

    def limits(self) -> dict:
        shown = ("default_k", "max_k", "max_query_chars", "max_upload_bytes", "max_upload_pixels")
        return {name: getattr(self, name) for name in shown} | {"page_k": min(self.page_k, self.max_k)}


class RequestRefused(Exception):
    """A request the service answers with `status` and {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def image_id(relative_path: str) -> str:
    """The id of an indexed image: 16 hex digits of the sha1 of its relative path with '/'."""
    return hashlib.sha1(PurePath(relative_path).as_posix().encode("utf-8")).hexdigest()[:16]


# --- snapshots of the index folder -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One loaded index folder, never changed: a request reads one from start to end."""

    index: PhotoIndex
    rows: dict  # image id -> row
    real_root: str  # the indexed folder with symlinks resolved
    stamp: tuple  # the manifest's stat when it was loaded

    @classmethod
    def load(cls, index_path: Path, fingerprint: str, stamp: tuple) -> "Snapshot":
        index = load_index(index_path, fingerprint)
        if not (len(index.paths) == len(index.vectors) == index.manifest.get("size", len(index.paths))):
            raise IndexMismatchError(f"--index {index_path}: keys, embeddings and manifest disagree on the size")
        rows = {image_id(path): row for row, path in enumerate(index.paths)}
        if len(rows) < len(index.paths):  # 64-bit ids: about one in 10^8 for a million photos
            logger.warning("%s: %d image ids collide; those images are found but not served", index_path,
                           len(index.paths) - len(rows))
        return cls(index, rows, os.path.realpath(index.root), stamp)

    def result(self, path: str, score: float) -> dict:
        identifier = image_id(path)
        return {"id": identifier, "score": round(float(score), 6), "url": f"/api/images/{identifier}",
                "path": PurePath(path).as_posix()}


def _manifest_stamp(index_path: Path) -> Optional[tuple]:
    """What changes when a build swaps a new folder in; None between its two renames."""
    try:
        stat = os.stat(index_path / MANIFEST)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size


class LiveIndex:
    """The current snapshot of an index folder, replaced whole when a build swaps a new one in.

    Requests never wait for a reload: the one that finds the check due loads the new folder while
    the others go on with the old snapshot."""

    def __init__(self, index_path, fingerprint: str, reload_interval_s: float = 1.0):
        self.path, self.fingerprint, self.interval = Path(index_path), fingerprint, reload_interval_s
        stamp = _manifest_stamp(self.path)
        self._snapshot = Snapshot.load(self.path, fingerprint, stamp)
        if _manifest_stamp(self.path) != stamp:  # a build swapped a new folder in while this one was read
            self._snapshot = Snapshot.load(self.path, fingerprint, _manifest_stamp(self.path))
        self._refused: Optional[tuple] = None
        self._checked = time.monotonic()
        self._reloading = threading.Lock()

    def current(self) -> Snapshot:
        if time.monotonic() - self._checked >= self.interval and self._reloading.acquire(blocking=False):
            try:
                self._checked = time.monotonic()
                self._reload_if_changed()
            finally:
                self._reloading.release()
        return self._snapshot

    def _reload_if_changed(self) -> None:
        stamp = _manifest_stamp(self.path)
        if stamp is None or stamp in (self._snapshot.stamp, self._refused):
            return
        try:
            snapshot = Snapshot.load(self.path, self.fingerprint, stamp)
        except (IndexMismatchError, OSError, ValueError, KeyError) as error:
            if _manifest_stamp(self.path) == stamp:  # not a folder swapped away mid-read: do not retry it
                self._refused = stamp
                logger.warning("the index at %s changed but cannot be served (%s); still serving the %d images loaded "
                               "before", self.path, error, len(self._snapshot.index))
            return
        if _manifest_stamp(self.path) == stamp:  # else swapped again while loading: the next check takes that one
            self._snapshot = snapshot
            logger.info("index %s reloaded: %d images", self.path, len(snapshot.index))


# --- the service behind the routes -------------------------------------------------------------


class TextBatcher:
    """Text queries that arrive while the model is busy are embedded together, in one call.

    The model runs one call at a time (behind `model_lock`); a query waits for it, and whoever
    gets it takes every query waiting (up to `max_batch`), so eight clients cost about one
    batched call instead of eight single ones, and no query waits for more than one call ahead.
    """

    def __init__(self, encode_texts, model_lock: threading.Lock, max_batch: int = TEXT_BATCH):
        self.encode_texts, self.model_lock, self.max_batch = encode_texts, model_lock, max_batch
        self._waiting: list = []  # (text, Future)
        self._queue_lock = threading.Lock()
        self.calls = 0

    def encode(self, text: str) -> np.ndarray:
        mine = Future()
        with self._queue_lock:
            self._waiting.append((text, mine))
        while not mine.done():
            with self.model_lock:
                with self._queue_lock:
                    batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                if batch:
                    self._run(batch)
        return mine.result()

    def _run(self, batch: list) -> None:
        self.calls += 1
        try:
            vectors = self.encode_texts([text for text, _ in batch])
        except BaseException as error:  # every waiting query gets the error, not a hang
            for _, future in batch:
                future.set_exception(error)
            return
        for (_, future), vector in zip(batch, vectors):
            future.set_result(vector[None, :])


class SearchService:
    """Searches for the routes: one embedder (behind a lock; texts batched) and the live index."""

    def __init__(self, embedder, index_path, config: ServiceConfig = ServiceConfig()):
        self.embedder, self.config = embedder, config
        self.model = embedder.describe()
        self.live = LiveIndex(index_path, embedder.fingerprint(), config.reload_interval_s)
        self._model_lock = threading.Lock()
        self._texts = TextBatcher(lambda texts: embedder.encode_texts(texts), self._model_lock)
        self._decoding = threading.BoundedSemaphore(DECODING_AT_ONCE)

    def _embed(self, encode, inputs) -> np.ndarray:
        with self._model_lock:
            return encode(inputs)

    def health(self) -> dict:
        snapshot = self.live.current()
        manifest = snapshot.index.manifest
        return {"status": "ok", "images": len(snapshot.index), "model": self.model, "backend": manifest.get("backend"),
                "index": str(self.live.path), "updated": manifest.get("updated"), "limits": self.config.limits()}

    def search_text(self, query: str, k: int) -> dict:
        if not query.strip():
            raise RequestRefused(400, "query parameter q is empty: pass the text to search for, e.g. /api/search?q=a+red+car")
        snapshot = self.live.current()
        vector = self._texts.encode(query)
        found = snapshot.index.search_vectors(vector, k)[0]
        return {"query": query, "results": [snapshot.result(path, score) for path, score in found]}

    def similar(self, identifier: str, k: int) -> dict:
        snapshot = self.live.current()
        row = self._row(snapshot, identifier)
        found = snapshot.index.search_vectors(snapshot.index.vectors[row], k + 1)[0]
        results = [snapshot.result(path, score) for path, score in found if image_id(path) != identifier][:k]
        return {"similar_to": snapshot.result(snapshot.index.paths[row], 1.0), "results": results}

    def search_upload(self, data: bytes, name: str, k: int) -> dict:
        self._check_pixels(data, name)
        try:
            with self._decoding:
                image = load_rgb(data, name)
                image = getattr(self.embedder, "prep", lambda same: same)(image)  # the model's size: memory back now
        except (MissingImageError, UndecodableImageError) as error:
            raise RequestRefused(415, f"the upload is not an image this server can read ({error})") from None
        snapshot = self.live.current()
        vector = self._embed(self.embedder.encode_images, [image])
        found = snapshot.index.search_vectors(vector, k)[0]
        return {"upload": {"name": name, "bytes": len(data)}, "results": [snapshot.result(p, s) for p, s in found]}

    def _check_pixels(self, data: bytes, name: str) -> None:
        """Refuses a decompression bomb from its header, before any pixel is decoded."""
        if not data:
            raise RequestRefused(400, f"the upload {name!r} is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    width, height = image.size
        except Image.DecompressionBombError as error:
            raise RequestRefused(413, f"the upload {name!r} has too many pixels ({error}); the limit is "
                                 f"{self.config.max_upload_pixels:,}") from None
        except UnidentifiedImageError:
            raise RequestRefused(415, f"the upload {name!r} is not an image (unknown format; send a JPEG, PNG, WebP, "
                                 "GIF, BMP or TIFF photo)") from None
        except (OSError, ValueError, SyntaxError) as error:
            raise RequestRefused(415, f"the upload {name!r} is not an image this server can read ({error})") from None
        if width * height > self.config.max_upload_pixels:
            raise RequestRefused(413, f"the upload {name!r} is {width} x {height} = {width * height:,} pixels; the limit is "
                                 f"{self.config.max_upload_pixels:,}")

    def image_file(self, identifier: str) -> tuple[str, str]:
        """(real path, content type) of an indexed image that still lies inside the indexed folder."""
        snapshot = self.live.current()
        row = self._row(snapshot, identifier)
        relative = snapshot.index.paths[row]
        real = os.path.realpath(os.path.join(snapshot.real_root, relative))
        if os.path.commonpath([real, snapshot.real_root]) != snapshot.real_root:
            raise RequestRefused(403, f"image {identifier} ({PurePath(relative).as_posix()}) resolves outside the indexed "
                                 "folder; refused")
        if not os.path.isfile(real):
            raise RequestRefused(404, f"image {identifier} ({PurePath(relative).as_posix()}) is no longer in the indexed folder")
        return real, _content_type(real)

    @staticmethod
    def _row(snapshot: Snapshot, identifier: str) -> int:
        row = snapshot.rows.get(identifier)
        if row is None:
            raise RequestRefused(404, f"no indexed image has id {identifier} (ids come from /api/search results)")
        return row


def _content_type(path: str) -> str:
    """From the file's actual format (Pillow reads only the header), else from its name."""
    try:
        with Image.open(path) as image:
            mime = Image.MIME.get(image.format or "")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        mime = None
    mime = mime or mimetypes.guess_type(path)[0] or "application/octet-stream"
    return _MIME_FIXES.get(mime, mime)


# --- uploads: bounded reads ----------------------------------------------------------------------


async def _read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 once it passes `limit` bytes (declared or counted)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:  # h11 refuses a malformed one itself
        raise RequestRefused(413, f"the request body ({int(declared):,} bytes) is over {what}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RequestRefused(413, f"the request body is over {what}")
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploaded_file(request: Request, config: ServiceConfig) -> tuple[str, bytes]:
    """(file name, bytes) of the multipart field `file`, read without ever holding more than the limit."""
    what = f"the upload limit of {config.max_upload_bytes:,} bytes ({config.max_upload_bytes / MiB:g} MiB)"
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestRefused(415, "send the photo as multipart/form-data in the field 'file' "
                             "(curl -F file=@photo.jpg 'http://HOST/api/search/image')")
    body = await _read_body(request, config.max_upload_bytes + FORM_OVERHEAD, what)

    async def once():
        yield body
        yield b""

    try:
        form = await MultiPartParser(request.headers, once(), max_files=1, max_fields=16).parse()
    except MultiPartException as error:
        raise RequestRefused(400, f"the upload is not valid multipart/form-data ({error.message})") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestRefused(400, "the form has no file in the field 'file' (send the photo as file=@photo.jpg)")
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > config.max_upload_bytes:
        raise RequestRefused(413, f"the uploaded file ({len(data):,} bytes) is over {what}")
    return upload.filename or "the upload", data


# --- the application ---------------------------------------------------------------------------


class _SecurityHeaders:
    """nosniff, no referrer and a same-origin-only content policy on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _given(value) -> str:
    """What a request sent, for an error message: short text quoted, long text only counted."""
    if not isinstance(value, (str, int)):
        return ""
    text = str(value)
    return f" (got {text!r})" if len(text) <= 40 else f" (got {len(text):,} characters)"


def _add_error_handlers(app: FastAPI, config: ServiceConfig) -> None:
    hints = {"q": f"the text to search for, 1 to {config.max_query_chars:,} characters",
             "k": f"the number of results, an integer in [1, {config.max_k}]",
             "image_id": "16 lowercase hex digits, the id of a result of /api/search"}  # fmt: skip

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, error: RequestRefused):
        return _error(error.status, error.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        problems = []
        for item in error.errors():
            where, name = (list(item.get("loc", ())) + ["request", "?"])[:2]
            given = _given(item.get("input"))
            hint = f"; {name} is {hints[name]}" if name in hints else ""
            problems.append(f"{where} parameter {name}: {item.get('msg', 'invalid')}{given}{hint}")
        return _error(400, "; ".join(problems) or "invalid request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        message = {404: f"no such page or endpoint: {request.url.path} (the page is /, the API /api/search?q=TEXT, "
                        "/api/search/image, /api/similar/ID, /api/images/ID, /healthz)",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(error.status_code, str(error.detail))
        return _error(error.status_code, message)

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception):
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(error).__name__}); the server log has the details")


def create_app(embedder, index_path, config: ServiceConfig = ServiceConfig()) -> FastAPI:
    """The search application over the index folder at `index_path`, built with `embedder`'s model
    (another model's index is refused with IndexMismatchError). Load the embedder with progress=False."""
    service = SearchService(embedder, index_path, config)
    app = FastAPI(title="dual-encoder search", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.service = service
    app.add_middleware(_SecurityHeaders)
    _add_error_handlers(app, config)

    def k_query():  # required when there is no default
        default = ... if config.default_k is None else config.default_k
        return Query(default, ge=1, le=config.max_k, description=f"number of results, 1 to {config.max_k}")

    def id_path():  # `:path` routes take any text, so that `..` and slashes meet this check, not the router
        return PathParam(pattern=ID_PATTERN, description="an image id from a search result")

    @app.get("/api/search")
    def search(q: str = Query(..., max_length=config.max_query_chars), k: int = k_query()):
        return service.search_text(q, k)

    @app.post("/api/search/image")
    async def search_image(request: Request, k: int = k_query()):
        name, data = await _uploaded_file(request, config)
        return await run_in_threadpool(service.search_upload, data, name, k)

    @app.get("/api/similar/{image_id:path}")
    def similar(image_id: str = id_path(), k: int = k_query()):
        return service.similar(image_id, k)

    @app.get("/api/images/{image_id:path}")
    def image(image_id: str = id_path()):
        path, content_type = service.image_file(image_id)
        return FileResponse(path, media_type=content_type, headers={"cache-control": "no-cache"})

    @app.get("/healthz")
    def health():
        return service.health()

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# --- serving -------------------------------------------------------------------------------------


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A socket bound to host:port (port 0: a free one), before any slow work, so that a port in
    use fails at once; uvicorn starts listening on it."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise InvalidArgumentError(f"--host {host}: cannot listen there ({error})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise InvalidArgumentError(f"--host {host} --port {port}: cannot listen there ({error.strerror}); pass another "
                                   "--port (0 picks a free one)") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _uvicorn_server(app: FastAPI, log_level: str):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, h11_max_incomplete_event_size=MAX_REQUEST_LINE))


def serve(app: FastAPI, sock: socket.socket, log_level: str = "info") -> None:
    """Serves `app` on the bound socket until Ctrl+C (uvicorn)."""
    _uvicorn_server(app, log_level).run(sockets=[sock])


class BackgroundServer:
    """`app` served on 127.0.0.1 from a thread, for a notebook or a test: `with BackgroundServer(app) as server:`
    then `server.url`; leaving the block stops it."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self._server = _uvicorn_server(app, log_level)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve(sockets=[self.sock])), daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.sock.close()
