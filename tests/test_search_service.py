"""The search service: real answers over the colour model, every bad request a 4xx JSON error,
no request path outside the index, concurrent clients, index swaps while serving, and the CLI."""

import hashlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dual_encoder.evaluation.embedders import load_embedder
from dual_encoder.search import build_index
from dual_encoder.search.service import BackgroundServer, ServiceConfig, create_app, image_id
from dual_encoder.testing import REPO, build_colour_saved_model, colour_image, shared_colour_model, write_colour_folders

COLOURS = ["red", "blue", "green"]


def png_bytes(colour: str, seed: int = 0) -> bytes:
    out = io.BytesIO()
    Image.fromarray(colour_image(colour, np.random.default_rng(seed))).save(out, "PNG")
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds almost none: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64))


def multipart(data: bytes, field: str = "file", filename: str = "photo.png", boundary: str = "b0undary") -> tuple:
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def folders(results) -> list:
    return [r["path"].split("/")[0] for r in results]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(shared_colour_model(tmp_path_factory))


@pytest.fixture(scope="module")
def embedder(model):
    return load_embedder(model, progress=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = write_colour_folders(tmp_path_factory.mktemp("served") / "photos", COLOURS, per_class=3, seed=4)
    (root / "blue" / "really-a-jpeg.png").write_bytes(_jpeg("blue"))  # the name says PNG, the bytes JPEG
    return root


def _jpeg(colour: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(colour_image(colour, np.random.default_rng(9))).save(out, "JPEG", quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def index_path(embedder, photos, tmp_path_factory):
    path = tmp_path_factory.mktemp("served_index") / "idx"
    build_index(embedder, photos, path)
    return path


@pytest.fixture(scope="module")
def client(embedder, index_path):
    with TestClient(create_app(embedder, index_path)) as test_client:
        yield test_client


def good_query_works(client) -> None:
    answer = client.get("/api/search", params={"q": "a red thing", "k": 3})
    assert answer.status_code == 200 and folders(answer.json()["results"]) == ["red"] * 3


# --- real answers ---------------------------------------------------------------------------------


def test_a_text_query_finds_its_colour_first_with_stable_ids_urls_and_relative_paths(client):
    body = client.get("/api/search", params={"q": "a red thing", "k": 3}).json()
    assert body["query"] == "a red thing" and folders(body["results"]) == ["red"] * 3
    for result in body["results"]:
        assert result["id"] == hashlib.sha1(result["path"].encode()).hexdigest()[:16] == image_id(result["path"])
        assert result["url"] == f"/api/images/{result['id']}"
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.9
    everything = client.get("/api/search", params={"q": "blue", "k": 24}).json()["results"]  # k beyond the index: all 10
    assert len(everything) == 10 and folders(everything)[:4] == ["blue"] * 4


def test_images_are_served_with_the_content_type_of_their_bytes(client, photos):
    results = client.get("/api/search", params={"q": "blue", "k": 4}).json()["results"]
    for result in results:
        answer = client.get(result["url"])
        assert answer.status_code == 200 and answer.content == (photos / result["path"]).read_bytes()
        expected = "image/jpeg" if result["path"].endswith("really-a-jpeg.png") else "image/png"
        assert answer.headers["content-type"] == expected and answer.headers["x-content-type-options"] == "nosniff"
    assert any(r["path"] == "blue/really-a-jpeg.png" for r in results)


def test_more_like_this_searches_the_stored_vector_and_leaves_the_image_out(client, embedder, monkeypatch):
    red = client.get("/api/search", params={"q": "red", "k": 1}).json()["results"][0]

    def no_model(*args, **kwargs):
        raise AssertionError("more like this must not embed anything again")

    monkeypatch.setattr(embedder, "encode_images", no_model)
    monkeypatch.setattr(embedder, "encode_texts", no_model)
    body = client.get(f"/api/similar/{red['id']}", params={"k": 2}).json()
    assert body["similar_to"]["path"] == red["path"] and body["similar_to"]["url"] == red["url"]
    assert folders(body["results"]) == ["red", "red"] and red["id"] not in [r["id"] for r in body["results"]]
    assert len(client.get(f"/api/similar/{red['id']}", params={"k": 200}).json()["results"]) == 9  # all the others


def test_an_uploaded_photo_finds_the_images_like_it(client):
    answer = client.post("/api/search/image", params={"k": 4}, files={"file": ("mine.png", png_bytes("green", 7), "image/png")})
    body = answer.json()
    assert answer.status_code == 200 and folders(body["results"])[:3] == ["green"] * 3
    assert body["upload"]["name"] == "mine.png"


def test_health_names_the_index_size_model_and_limits(client, model):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["images"] == 10 and health["backend"] == "exact"
    assert health["model"]["path"].startswith(str(Path(model).resolve()))
    assert health["limits"] == {"default_k": None, "page_k": 24, "max_k": 200, "max_query_chars": 1000,
                                "max_upload_bytes": 10 * 2**20, "max_upload_pixels": 50_000_000}


def test_the_page_is_served_with_its_files_and_asks_for_nothing_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert all(f'id="{name}"' in page.text for name in ("q", "results", "status", "file", "heading"))
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200
        assert "http://" not in asset.text and "https://" not in asset.text and "//cdn" not in asset.text
    assert "http://" not in page.text and "https://" not in page.text


# --- bad requests ---------------------------------------------------------------------------------

HEX = "0123456789abcdef"
BAD_REQUESTS = [  # (method, url, request keywords, status, words the error must hold)
    ("GET", "/api/search", {}, 400, "parameter q: Field required"),
    ("GET", "/api/search?k=3", {}, 400, "parameter q"),
    ("GET", "/api/search?q=&k=3", {}, 400, "q is empty"),
    ("GET", "/api/search?q=%20%20&k=3", {}, 400, "q is empty"),
    ("GET", "/api/search?q=red", {}, 400, "parameter k: Field required"),
    ("GET", "/api/search?q=red&k=", {}, 400, "parameter k"),
    ("GET", "/api/search?q=red&k=0", {}, 400, "parameter k: Input should be greater than or equal to 1"),
    ("GET", "/api/search?q=red&k=-5", {}, 400, "parameter k"),
    ("GET", "/api/search?q=red&k=abc", {}, 400, "parameter k: Input should be a valid integer"),
    ("GET", "/api/search?q=red&k=2.5", {}, 400, "parameter k"),
    ("GET", "/api/search?q=red&k=201", {}, 400, "an integer in [1, 200]"),
    ("GET", "/api/search?q=red&k=99999999999999999999", {}, 400, "less than or equal to 200"),
    ("GET", "/api/search?k=3&q=" + "a" * 20_000, {}, 400, "at most 1000 characters (got 20,000 characters)"),
    ("POST", "/api/search/image", {"files": {"file": ("a.png", png_bytes("red"), "image/png")}}, 400, "parameter k"),
    ("POST", "/api/search/image?k=0", {"files": {"file": ("a.png", png_bytes("red"), "image/png")}}, 400, "parameter k"),
    ("POST", "/api/search/image?k=3", {"files": {"file": ("notes.png", b"hello, not an image", "image/png")}}, 415,
     "not an image"),
    ("POST", "/api/search/image?k=3", {"files": {"file": ("cut.png", png_bytes("red")[:300], "image/png")}}, 415,
     "cut.png"),
    ("POST", "/api/search/image?k=3", {"files": {"file": ("empty.png", b"", "image/png")}}, 400, "empty"),
    ("POST", "/api/search/image?k=3", {"files": {"file": ("big.png", b"\0" * (10 * 2**20 + 1), "image/png")}}, 413,
     "10 MiB"),
    ("POST", "/api/search/image?k=3", {"files": {"file": ("bomb.png", png_header(8000, 8000), "image/png")}}, 413,
     "8000 x 8000 = 64,000,000 pixels; the limit is 50,000,000"),
    ("POST", "/api/search/image?k=3", {"files": {"file": ("bomb.png", png_header(20000, 20000), "image/png")}}, 413,
     "too many pixels"),
    ("POST", "/api/search/image?k=3", {"files": {"photo": ("a.png", png_bytes("red"), "image/png")}}, 400,
     "no file in the field 'file'"),
    ("POST", "/api/search/image?k=3", {"data": {"file": "a.png"}}, 415, "multipart/form-data"),
    ("POST", "/api/search/image?k=3",
     {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, "file"),
    ("POST", "/api/search/image?k=3", {"content": b"\0" * 100, "headers": {"content-type": "image/png"}}, 415, "field 'file'"),
    ("GET", f"/api/images/{HEX[:15]}", {}, 400, "parameter image_id"),
    ("GET", f"/api/images/{HEX.upper()}", {}, 400, "16 lowercase hex digits"),
    ("GET", f"/api/images/{HEX}0", {}, 400, "parameter image_id"),
    ("GET", "/api/images/", {}, 400, "parameter image_id"),
    ("GET", "/api/images/%2E%2E", {}, 400, "parameter image_id"),  # a plain `..` the client resolves: see the raw test
    ("GET", "/api/images/..%2F..%2Fetc%2Fpasswd", {}, 400, "parameter image_id"),
    ("GET", "/api/images/%2Fetc%2Fpasswd", {}, 400, "parameter image_id"),
    ("GET", "/api/images//etc/passwd", {}, 400, "parameter image_id"),
    ("GET", "/api/images/red%2F0.png", {}, 400, "parameter image_id"),
    ("GET", f"/api/images/{HEX}", {}, 404, f"no indexed image has id {HEX}"),
    ("GET", f"/api/similar/{HEX}?k=3", {}, 404, f"no indexed image has id {HEX}"),
    ("GET", "/api/similar/..%2Fkeys.json?k=3", {}, 400, "parameter image_id"),
    ("GET", "/api/nothing-here", {}, 404, "no such page or endpoint: /api/nothing-here"),
    ("GET", "/static/../service.py", {}, 404, "no such page"),
    ("GET", "/static/%2E%2E/service.py", {}, 404, "no such page"),
    ("POST", "/api/search?q=red", {}, 405, "POST is not allowed on /api/search"),
    ("DELETE", f"/api/images/{HEX}", {}, 405, "DELETE is not allowed"),
]


@pytest.mark.parametrize("method, url, keywords, status, words", BAD_REQUESTS, ids=[f"{c[3]}:{c[1][:60]}" for c in BAD_REQUESTS])
def test_every_bad_request_gets_a_4xx_json_error_and_the_server_keeps_serving(client, method, url, keywords, status, words):
    answer = client.request(method, url, **keywords)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json" and set(answer.json()) == {"error"}
    assert words in answer.json()["error"]
    good_query_works(client)


def test_an_upload_over_the_limit_is_refused_while_reading_when_no_length_is_declared(client):
    body, content_type = multipart(b"\0" * (10 * 2**20 + 70_000))
    chunks = (body[start:start + 2**20] for start in range(0, len(body), 2**20))  # chunked: no Content-Length
    answer = client.post("/api/search/image?k=3", content=chunks, headers={"content-type": content_type})
    assert answer.status_code == 413 and "upload limit of 10,485,760 bytes" in answer.json()["error"]
    body, content_type = multipart(png_bytes("blue", 3))
    answer = client.post("/api/search/image?k=3", content=iter([body]), headers={"content-type": content_type})
    assert answer.status_code == 200 and folders(answer.json()["results"])[:3] == ["blue"] * 3


def test_the_limits_come_from_the_config_and_k_may_have_a_default(embedder, index_path):
    with TestClient(create_app(embedder, index_path, ServiceConfig(default_k=3))) as lenient:
        assert len(lenient.get("/api/search?q=red").json()["results"]) == 3
    config = ServiceConfig(max_k=5, max_query_chars=10, max_upload_bytes=1000)
    with TestClient(create_app(embedder, index_path, config)) as small:
        assert "parameter k: Field required" in small.get("/api/search?q=red").json()["error"]
        assert "[1, 5]" in small.get("/api/search?q=red&k=6").json()["error"]
        assert "at most 10 characters" in small.get("/api/search?q=a+red+thing&k=2").json()["error"]
        assert small.post("/api/search/image?k=2", files={"file": ("a.png", png_bytes("red"))}).status_code == 413
        assert len(small.get("/api/search?q=red&k=5").json()["results"]) == 5
    with pytest.raises(ValueError, match="default_k"):
        ServiceConfig(default_k=300)


# --- files outside the index ------------------------------------------------------------------------


@pytest.fixture
def own_index(embedder, tmp_path):
    """A fresh folder and index that a test may change."""
    photos = write_colour_folders(tmp_path / "photos", COLOURS, per_class=2, seed=5)
    build_index(embedder, photos, tmp_path / "idx")
    return photos, tmp_path / "idx"


def test_a_symlink_swapped_in_that_points_outside_the_folder_is_refused(embedder, own_index, tmp_path):
    photos, path = own_index
    (tmp_path / "secret.png").write_bytes(png_bytes("red", 1))
    os.remove(photos / "red" / "0.png")
    os.symlink(tmp_path / "secret.png", photos / "red" / "0.png")
    os.remove(photos / "blue" / "1.png")
    with TestClient(create_app(embedder, path)) as test_client:
        linked = test_client.get(f"/api/images/{image_id('red/0.png')}")
        assert linked.status_code == 403 and "outside the indexed folder" in linked.json()["error"]
        gone = test_client.get(f"/api/images/{image_id('blue/1.png')}")
        assert gone.status_code == 404 and "no longer in the indexed folder" in gone.json()["error"]
        assert test_client.get(f"/api/images/{image_id('red/1.png')}").content == (photos / "red" / "1.png").read_bytes()


def test_paths_in_a_tampered_index_never_leave_the_folder(embedder, own_index, tmp_path):
    photos, path = own_index
    (tmp_path / "outside.png").write_bytes(png_bytes("red", 2))
    keys = json.loads((path / "keys.json").read_text())
    keys["paths"][:2] = ["../outside.png", str(tmp_path / "outside.png")]  # relative escape, absolute path
    (path / "keys.json").write_text(json.dumps(keys))
    with TestClient(create_app(embedder, path)) as test_client:
        for tampered in keys["paths"][:2]:
            answer = test_client.get(f"/api/images/{image_id(tampered)}")
            assert answer.status_code == 403 and "outside the indexed folder" in answer.json()["error"]


# --- concurrency and updates while serving ----------------------------------------------------------


def one_call_at_a_time(encode, calls: dict):
    """`encode`, recording the most calls that were ever inside it at once."""
    lock = threading.Lock()

    def probe(inputs):
        with lock:
            calls["inside"] += 1
            calls["most"] = max(calls["most"], calls["inside"])
        time.sleep(0.003)  # long enough for an unserialised second call to arrive
        try:
            return encode(inputs)
        finally:
            with lock:
                calls["inside"] -= 1

    return probe


def test_concurrent_clients_get_the_answers_one_client_gets(embedder, index_path, monkeypatch):
    calls = {"inside": 0, "most": 0}
    for name in ("encode_texts", "encode_images"):
        monkeypatch.setattr(embedder, name, one_call_at_a_time(getattr(embedder, name), calls))
    requests = [("GET", "/api/search", {"params": {"q": f"a {colour} thing", "k": k}})
                for colour in COLOURS for k in (1, 3, 10)]
    with BackgroundServer(create_app(embedder, index_path)) as server, httpx.Client(base_url=server.url) as one:
        ids = [r["id"] for r in one.get("/api/search", params={"q": "red", "k": 10}).json()["results"]]
        requests += [("GET", f"/api/similar/{i}", {"params": {"k": 4}}) for i in ids[:4]]
        requests += [("POST", "/api/search/image", {"params": {"k": 3}, "files": {"file": ("p.png", png_bytes(c, 11))}})
                     for c in COLOURS]
        expected = [one.request(method, url, **kw).json() for method, url, kw in requests]
        answers, failures = {}, []

        def client_thread(number: int) -> None:
            with httpx.Client(base_url=server.url, timeout=60) as mine:
                for step in range(20):
                    which = (number * 7 + step * 3) % len(requests)
                    method, url, kw = requests[which]
                    try:
                        answers[(number, step)] = (which, mine.request(method, url, **kw).json())
                    except Exception as error:  # collected: an assertion in a thread would be lost
                        failures.append(repr(error))

        threads = [threading.Thread(target=client_thread, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == [] and len(answers) == 160
    assert all(answer == expected[which] for which, answer in answers.values())
    assert len({which for which, _ in answers.values()}) == len(requests)  # every kind of request was asked
    assert calls["most"] == 1  # the model was shared, one call at a time


def _raw_get(port: int, target: str) -> tuple[int, dict]:
    """GET with the path sent exactly as written (HTTP clients normalise `..` away)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_dot_segments_and_encoded_slashes_sent_raw_are_refused(embedder, index_path):
    with BackgroundServer(create_app(embedder, index_path)) as server:
        port = int(server.url.rstrip("/").rsplit(":", 1)[1])
        for target in ("/api/images/..", "/api/images/../../../etc/passwd", "/api/images/..%2F..%2Fetc%2Fpasswd",
                       "/api/images//etc/passwd", "/api/images/%2Fetc%2Fpasswd", "/api/similar/../../keys.json"):
            status, body = _raw_get(port, target)
            assert status == 400 and "parameter image_id" in body["error"], (target, body)
        status, body = _raw_get(port, "/static/../../index.py")
        assert status == 404 and "no such page" in body["error"]
        assert _raw_get(port, "/healthz")[1]["images"] == 10


def test_an_oversized_upload_over_a_real_socket_gets_413_and_the_server_goes_on(embedder, index_path):
    with BackgroundServer(create_app(embedder, index_path)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        declared = http.post("/api/search/image?k=3", files={"file": ("big.png", b"\0" * (12 * 2**20))})
        body, content_type = multipart(b"\0" * (12 * 2**20))
        counted = http.post("/api/search/image?k=3", content=iter([body[:2**20], body[2**20:]]),
                            headers={"content-type": content_type})
        assert (declared.status_code, counted.status_code) == (413, 413)
        assert "10 MiB" in declared.json()["error"] and "10 MiB" in counted.json()["error"]
        assert folders(http.get("/api/search", params={"q": "red", "k": 3}).json()["results"]) == ["red"] * 3


def test_an_index_rebuilt_while_serving_is_picked_up_whole(embedder, own_index):
    photos, path = own_index
    app = create_app(embedder, path, ServiceConfig(reload_interval_s=0))
    seen, problems, stop = set(), [], threading.Event()

    def keep_asking(test_client) -> None:
        while not stop.is_set():
            body = test_client.get("/api/search", params={"q": "blue", "k": 200}).json()
            paths = {r["path"] for r in body.get("results", [])}
            seen.add(len(paths))
            if not paths or any(r["id"] != image_id(r["path"]) for r in body["results"]) or len(paths) not in (6, 7, 8):
                problems.append(body)

    with TestClient(app) as test_client:
        asker = threading.Thread(target=keep_asking, args=(test_client,))
        asker.start()
        try:
            for number, size in ((1, 7), (2, 8)):
                (photos / "blue" / f"new{number}.png").write_bytes(png_bytes("blue", 20 + number))
                build_index(embedder, photos, path)
                deadline = time.monotonic() + 10
                while test_client.get("/healthz").json()["images"] != size and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert test_client.get("/healthz").json()["images"] == size
        finally:
            stop.set()
            asker.join()
        assert problems == [] and 8 in seen
        found = test_client.get(f"/api/similar/{image_id('blue/new2.png')}", params={"k": 3}).json()["results"]
        assert folders(found) == ["blue"] * 3
        assert test_client.get(f"/api/images/{image_id('blue/new2.png')}").content == (photos / "blue" / "new2.png").read_bytes()


def test_an_index_of_another_model_swapped_in_is_refused_and_the_old_one_kept(embedder, own_index, tmp_path, caplog):
    photos, path = own_index
    with TestClient(create_app(embedder, path, ServiceConfig(reload_interval_s=0))) as test_client:
        other = load_embedder(str(build_colour_saved_model(tmp_path / "other" / "saved_model", seed=2)), progress=False)
        (photos / "extra.png").write_bytes(png_bytes("red", 30))
        build_index(other, photos, path, rebuild=True)
        with caplog.at_level("WARNING", logger="dual_encoder.search.service"):
            health = test_client.get("/healthz").json()
        assert health["images"] == 6 and health["model"] == embedder.describe()
        assert "cannot be served" in caplog.text and "another model" in caplog.text
        assert folders(test_client.get("/api/search", params={"q": "red", "k": 2}).json()["results"]) == ["red", "red"]


def test_an_index_that_is_not_there_is_refused_at_start(embedder, tmp_path):
    with pytest.raises(ValueError, match="not a complete index folder"):
        create_app(embedder, tmp_path / "missing")


# --- the command ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("flag, value, words", [
    ("--port", "70000", "--port must be an integer in [0, 65535], got 70000"),
    ("--port", "-1", "--port must be an integer in [0, 65535], got -1"),
    ("--max-k", "0", "--max-k must be an integer in [1, 10000], got 0"),
    ("--max-upload-mb", "0", "--max-upload-mb must be a number in (0, 1024]"),
    ("--images", "/nonexistent/photos", "--images /nonexistent/photos: no such folder"),
    ("--batch-size", "0", "--batch-size must be an integer"),
])
def test_the_command_refuses_bad_flags_with_one_error_line(model, photos, tmp_path, capsys, flag, value, words):
    from dual_encoder.cli import evaluate

    argv = {"--model": model, "--images": str(photos), "--cache-dir": str(tmp_path / "cache"), flag: value}
    assert evaluate.main(["serve", *[part for pair in argv.items() for part in pair]]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert not (tmp_path / "cache").exists()  # refused before anything was written


def test_the_command_refuses_a_port_in_use_before_indexing(model, photos, tmp_path, capsys):
    from dual_encoder.cli import evaluate

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        argv = ["serve", "--model", model, "--images", str(photos), "--port", port, "--cache-dir", str(tmp_path / "c")]
        assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"--port {port}: cannot listen there" in err and not (tmp_path / "c").exists()


def test_the_command_without_a_cache_serves_a_temporary_index_and_leaves_nothing(model, photos, tmp_path, monkeypatch,
                                                                                  capsys):
    from dual_encoder.cli import evaluate
    from dual_encoder.search import service

    seen = {}

    def serve_once(app, sock):  # in place of uvicorn: ask the app, then stop as Ctrl+C would
        with TestClient(app) as test_client:
            seen["health"] = test_client.get("/healthz").json()
            seen["found"] = folders(test_client.get("/api/search", params={"q": "red", "k": 2}).json()["results"])
        seen["index_existed"] = Path(seen["health"]["index"]).is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(service, "serve", serve_once)
    argv = ["serve", "--model", model, "--images", str(photos), "--no-cache", "--cache-dir", str(tmp_path / "cache"),
            "--port", "0", "--max-k", "5", "--max-upload-mb", "0.5", "--quiet"]
    assert evaluate.main(argv) == 0
    assert seen["found"] == ["red", "red"] and seen["index_existed"]
    limits = seen["health"]["limits"]
    assert (limits["default_k"], limits["page_k"], limits["max_k"], limits["max_upload_bytes"]) == (None, 5, 5, 2**19)
    assert not Path(seen["health"]["index"]).exists() and not (tmp_path / "cache").exists()
    out = capsys.readouterr().out
    assert "indexed 10 images" in out and "serving the search page at http://127.0.0.1:" in out and "stopped" in out


def test_the_help_documents_every_flag_and_the_limits():
    from dual_encoder.cli import serve

    parser = serve.build_parser()
    assert parser.prog == "evaluate.py serve"
    assert all(action.help for action in parser._actions)
    text = " ".join(parser.format_help().split())
    for words in ("--max-k K", "range [0, 65535]", "1,000 characters", "50,000,000 pixels", "default: 127.0.0.1",
                  "/api/search?q=TEXT&k=K", "default: 10"):
        assert words in text, words


@pytest.mark.slow
def test_the_command_indexes_the_folder_and_serves_it_in_a_real_process(model, photos, tmp_path):
    port, cache = free_port(), tmp_path / "cache"
    before = sorted(p.name for p in photos.rglob("*"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    server = subprocess.Popen(
        [sys.executable, "evaluate.py", "serve", "--model", model, "--images", str(photos), "--port", str(port),
         "--cache-dir", str(cache), "--quiet"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, health = time.monotonic() + 90, None
        while health is None and time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
            except httpx.TransportError:
                time.sleep(0.25)
        assert health is not None, f"no answer on port {port} within 90 s (exit code {server.poll()})"
        assert health["images"] == 10
        base = f"http://127.0.0.1:{port}"
        found = httpx.get(f"{base}/api/search", params={"q": "a green thing", "k": 3}).json()["results"]
        assert folders(found) == ["green"] * 3
        long_query = httpx.get(f"{base}/api/search", params={"q": "x" * 20_000})  # past h11's default line limit
        assert long_query.status_code == 400 and "at most 1000 characters" in long_query.json()["error"]
        status, body = _raw_get(port, "/api/images/../../../etc/passwd")
        assert status == 400 and "image_id" in body["error"]
        assert httpx.get(f"{base}{found[0]['url']}").content == (photos / found[0]["path"]).read_bytes()
        assert [p.name for p in cache.iterdir() if p.name.startswith("index-")] != []  # the index went into --cache-dir
        assert sorted(p.name for p in photos.rglob("*")) == before  # nothing written into the photo folder
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl+C
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    assert server.returncode == 0, output
    assert f"serving the search page at http://127.0.0.1:{port}/" in output and "indexed 10 images" in output


def test_text_queries_that_arrive_together_are_embedded_in_one_call_with_the_same_answers(embedder):
    from dual_encoder.search.service import TextBatcher

    sizes, gate = [], threading.Event()

    def slow_encode(texts):
        sizes.append(len(texts))
        gate.wait(5)  # the first call holds the model until every client is waiting
        return embedder.encode_texts(texts)

    batcher = TextBatcher(slow_encode, threading.Lock())
    texts = [f"a {colour} thing {i}" for i, colour in enumerate(COLOURS * 3)]
    answers = {}
    threads = [threading.Thread(target=lambda t=t: answers.__setitem__(t, batcher.encode(t))) for t in texts]
    for thread in threads:
        thread.start()
    while sum(sizes) + len(batcher._waiting) < len(texts):
        time.sleep(0.01)
    gate.set()
    for thread in threads:
        thread.join()
    assert sum(sizes) == len(texts) and len(sizes) == 2  # the first query alone, then all the others at once
    for text in texts:
        np.testing.assert_allclose(answers[text], embedder.encode_texts([text]), atol=1e-6)


def test_an_error_in_a_batched_call_reaches_every_query_in_it():
    from dual_encoder.search.service import TextBatcher

    def broken(texts):
        raise RuntimeError(f"model failed on {len(texts)} texts")

    batcher = TextBatcher(broken, threading.Lock())
    with pytest.raises(RuntimeError, match="model failed on 1 texts"):
        batcher.encode("red")
    assert batcher._waiting == []
