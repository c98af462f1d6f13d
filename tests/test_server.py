"""The A1111-compatible server, served by a real uvicorn on loopback and called with httpx."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate
from PIL import Image

from runtime.clip import VOCAB_DIR
from runtime.errors import SettingsError
from runtime.images import ImagePolicy
from runtime.interrogator import Interrogator
from runtime.server.app import ServerSettings, create_app
from tests.helpers import device_set
from tests.hostile_images import dib_header, ico_hiding, png_bomb
from tests.loopback import free_port

REPO = Path(__file__).resolve().parent.parent
PHOTOS = sorted((REPO / "data/images").glob("*.jpg"))
INTERROGATE = "/sdapi/v1/interrogate"
OPTIONS = "/sdapi/v1/options"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def photo(name: str = "cat.jpg") -> str:
    return b64((REPO / "data/images" / name).read_bytes())


def png(image: Image.Image, format: str = "PNG") -> bytes:  # noqa: A002 - Pillow's name
    out = io.BytesIO()
    image.save(out, format=format)
    return out.getvalue()


@pytest.fixture(scope="module")
def expected(interrogator: Interrogator) -> dict[str, str]:
    """Each photo's caption, interrogated directly (no server)."""
    from runtime.preprocess import open_image

    return {p.name: interrogator.interrogate(open_image(p)).caption for p in PHOTOS}


def _assert_error(client: httpx.Client, body: object, status: int, detail: str | None = None, **kw: object) -> None:
    """The stated status and detail in A1111's error shape; then a good request still succeeds."""
    response = client.post(INTERROGATE, json=body, **kw) if body is not None else client.post(INTERROGATE, **kw)
    assert response.status_code == status, response.text
    answer = response.json()
    assert set(answer) == {"error", "detail", "body", "errors"}
    if detail is not None:
        assert answer["detail"] == detail
    good = client.post(INTERROGATE, json={"image": photo()})
    assert good.status_code == 200 and good.json()["caption"]


def test_clip_answers_exactly_a_caption_from_the_vocabulary(serve, expected: dict[str, str]) -> None:
    client = serve()
    response = client.post(INTERROGATE, json={"image": photo(), "model": "clip", "unknown_field": 1})
    assert response.status_code == 200
    assert response.json() == {"caption": expected["cat.jpg"]}


@pytest.mark.parametrize(
    "encode",
    [
        lambda s: "data:image/jpeg;base64," + s,
        lambda s: "\n".join(s[i : i + 76] for i in range(0, len(s), 76)) + "\n",  # MIME line breaks
        lambda s: "  " + s.rstrip("=") + " ",  # padding dropped, spaces around
        lambda s: s.replace("+", "-").replace("/", "_"),  # URL-safe alphabet
    ],
    ids=["data-url", "line-breaks", "no-padding", "urlsafe"],
)
def test_lenient_base64_decodes_to_the_same_caption(serve, expected: dict[str, str], encode) -> None:
    client = serve()
    response = client.post(INTERROGATE, json={"image": encode(photo())})
    assert response.json() == {"caption": expected["cat.jpg"]}


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "I;16"])
def test_every_image_mode_is_converted_to_rgb(serve, mode: str) -> None:
    client = serve()
    image = Image.open(REPO / "data/images/cat.jpg").convert("RGB")
    converted = image.convert("P") if mode == "P" else image.convert(mode)
    data = png(converted, "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG"))
    response = client.post(INTERROGATE, json={"image": b64(data)})
    assert response.status_code == 200 and response.json()["caption"]


def test_deepdanbooru_answers_tags_from_the_tag_categories(serve, interrogator: Interrogator) -> None:
    client = serve()
    client.post(OPTIONS, json={"interrogate_deepbooru_score_threshold": 0.0}).raise_for_status()
    tags = client.post(INTERROGATE, json={"image": photo(), "model": "deepdanbooru"}).json()["caption"].split(", ")
    vocabulary = {label for c in interrogator.tables.categories if c.tags for label in c.labels}
    assert set(tags) == vocabulary and tags == sorted(tags)  # threshold 0: every tag, alphabetical


def test_error_cases_answer_as_a1111_and_the_server_keeps_serving(serve) -> None:
    client = serve()
    jpeg = (REPO / "data/images/cat.jpg").read_bytes()
    _assert_error(client, {"image": photo(), "model": "blip"}, 404, "Model not found")
    _assert_error(client, {"image": ""}, 500, "Invalid encoded image")
    _assert_error(client, {}, 500, "Invalid encoded image")
    _assert_error(client, {"image": "not base64 at all!"}, 500, "Invalid encoded image")
    _assert_error(client, {"image": b64(b"plain text, not an image")}, 500, "Invalid encoded image")
    _assert_error(client, {"image": b64(jpeg[: len(jpeg) // 2])}, 500, "Invalid encoded image")  # truncated
    _assert_error(client, {"image": "data:image/png," + photo()}, 500, "Invalid encoded image")  # not base64
    _assert_error(client, {"image": 42}, 422)
    _assert_error(client, None, 422, content=b"{not json", headers={"content-type": "application/json"})


def test_images_over_the_pixel_cap_are_refused_before_decoding(serve) -> None:
    client = serve(images=ImagePolicy(max_pixels=1_000_000))
    bomb = png_bomb(2000, 1000)
    assert len(bomb) < 20_000  # 6 MB of pixels
    _assert_error(client, {"image": b64(bomb)}, 413)
    _assert_error(client, {"image": b64(png_bomb(100_000, 100_000, rows=1))}, 413)  # Pillow's own bomb guard
    small = png(Image.new("RGB", (1000, 1000), "white"))
    assert client.post(INTERROGATE, json={"image": b64(small)}).status_code == 200


def test_bodies_over_the_size_cap_are_refused(serve) -> None:
    client = serve(max_body_bytes=100_000)
    big = {"image": "A" * 200_000}
    _assert_error(client, big, 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"image": "'
        for _ in range(20):
            yield b"A" * 10_000
        yield b'"}'

    _assert_error(client, None, 413, content=chunks(), headers={"content-type": "application/json"})


def test_32_concurrent_requests_are_all_answered_and_none_crossed(serve, expected: dict[str, str]) -> None:
    assert len(set(expected.values())) >= 5, "the photos must caption differently for this test to mean anything"
    client = serve()
    names = [PHOTOS[i % len(PHOTOS)].name for i in range(32)]

    def ask(name: str) -> tuple[str, int, str]:
        response = client.post(INTERROGATE, json={"image": photo(name)}, timeout=120)
        return name, response.status_code, response.json().get("caption", response.text)

    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, names))
    assert time.monotonic() - started < 120
    assert [status for _, status, _ in answers] == [200] * 32
    assert all(caption == expected[name] for name, _, caption in answers)


@contextmanager
def encoder_busy(interrogator: Interrogator) -> Iterator[None]:
    """Hold the NPU as a long inference would."""
    with interrogator.clip.npu.hold():
        yield


def _wait_until(check, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_a_full_queue_gets_503_at_once_and_the_queued_requests_finish(serve, interrogator: Interrogator) -> None:
    client = serve(queue_size=1, queue_timeout_s=30)
    with ThreadPoolExecutor(2) as pool:
        with encoder_busy(interrogator):
            queued = [pool.submit(client.post, INTERROGATE, json={"image": photo()}) for _ in range(2)]
            _wait_until(lambda: client.get("/healthz").json()["queue"]["inside"] == 2)
            started = time.monotonic()
            refused = client.post(INTERROGATE, json={"image": photo()})
            assert refused.status_code == 503 and time.monotonic() - started < 5
            assert refused.json()["detail"].startswith("Server busy")
        assert [f.result(timeout=60).status_code for f in queued] == [200, 200]
    assert client.get("/healthz").json()["queue"]["refused"] == 1


def test_a_request_waiting_past_the_queue_timeout_gets_503(serve, interrogator: Interrogator) -> None:
    client = serve(queue_timeout_s=0.5)
    with encoder_busy(interrogator):
        response = client.post(INTERROGATE, json={"image": photo()})
    assert response.status_code == 503 and "busy" in response.json()["detail"]
    assert client.post(INTERROGATE, json={"image": photo()}).status_code == 200


def test_basic_auth(serve) -> None:
    client = serve(credentials={"alice": "s3:cret", "bob": "hunter2"})
    body = {"image": photo()}
    missing = client.post(INTERROGATE, json=body)
    assert missing.status_code == 401 and missing.json()["detail"] == "Incorrect username or password"
    wrong = client.post(INTERROGATE, json=body, auth=("alice", "hunter2"))
    assert wrong.status_code == 401 and wrong.json()["detail"] == "Incorrect username or password"
    assert wrong.headers["www-authenticate"] == "Basic"
    assert client.get(OPTIONS, auth=("mallory", "s3:cret")).status_code == 401
    assert client.post(INTERROGATE, json=body, auth=("alice", "s3:cret")).status_code == 200
    assert client.get(OPTIONS, auth=("bob", "hunter2")).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_a_non_ascii_password_authenticates_from_utf8_and_latin1_clients(serve) -> None:
    """httpx and curl send UTF-8 credentials; requests sends latin-1 (both were refused: FastAPI's own
    HTTPBasic decodes ASCII only)."""
    client = serve(credentials={"jürgen": "pässwörd ✓", "zoë": "crème"})
    body = {"image": photo()}
    assert client.post(INTERROGATE, json=body, auth=("jürgen", "pässwörd ✓")).status_code == 200
    latin1 = base64.b64encode("zoë:crème".encode("latin-1")).decode()
    assert client.get(OPTIONS, headers={"Authorization": f"Basic {latin1}"}).status_code == 200
    assert client.post(INTERROGATE, json=body, auth=("jürgen", "passwörd ✓")).status_code == 401
    broken = base64.b64encode(b"\xff\xfe").decode()  # no ':' whatever the encoding: refused, not a 500
    assert client.get(OPTIONS, headers={"Authorization": f"Basic {broken}"}).status_code == 401


def test_options_change_the_answers(serve, interrogator: Interrogator, expected: dict[str, str]) -> None:
    client = serve()
    from runtime.preprocess import open_image

    found = interrogator.interrogate(open_image(REPO / "data/images/cat.jpg")).categories
    flavors = {p.label for c in found if c.name == "flavors" for p in c.picks}
    tags = next(c for c in interrogator.tables.categories if c.name == "tags")
    defaults = client.get(OPTIONS).json()
    assert defaults["interrogate_return_ranks"] is False and defaults["deepbooru_escape"] is True
    assert defaults["sd_model_checkpoint"] is None and defaults["api_enable_requests"] is False
    body = {"image": photo()}

    def caption(model: str = "clip") -> str:
        return client.post(INTERROGATE, json={**body, "model": model}).json()["caption"]

    assert client.post(OPTIONS, json={"interrogate_return_ranks": True, "not_an_option": 1}).json() is None
    assert all(re.fullmatch(r"\(.+:-?\d\.\d{3}\)", part) for part in caption().split(", "))
    client.post(OPTIONS, json={"interrogate_return_ranks": False, "interrogate_clip_skip_categories": ["flavors"]})
    assert caption() == ", ".join(p for p in expected["cat.jpg"].split(", ") if p not in flavors)
    client.post(OPTIONS, json={"interrogate_clip_skip_categories": [], "interrogate_clip_dict_limit": 1})
    firsts = [c.labels[0] for c in interrogator.tables.categories if c.mode == "one" and c.caption]
    assert caption().split(", ")[: len(firsts)] == firsts
    client.post(OPTIONS, json={"interrogate_clip_dict_limit": 0})
    assert caption() == expected["cat.jpg"]

    client.post(OPTIONS, json={"interrogate_deepbooru_score_threshold": 0.0, "deepbooru_use_spaces": False})
    underscored = caption("deepdanbooru").split(", ")
    assert "full_body" in underscored and len(underscored) == len(set(tags.labels))
    client.post(OPTIONS, json={"deepbooru_filter_tags": "full body, sky", "deepbooru_use_spaces": True})
    filtered = caption("deepdanbooru").split(", ")
    assert "full body" not in filtered and "sky" not in filtered and len(filtered) == len(underscored) - 2
    client.post(OPTIONS, json={"deepbooru_sort_alpha": False, "interrogate_return_ranks": True})
    scores = [float(t.rsplit(":", 1)[1].rstrip(")")) for t in caption("deepdanbooru").split(", ")]
    assert scores == sorted(scores, reverse=True)
    client.post(OPTIONS, json={"interrogate_deepbooru_score_threshold": 1.0})
    assert caption("deepdanbooru") == ""
    detailed = client.post("/clip/v1/interrogate", json={"image": photo()}).json()
    assert detailed["tags"] == "" and detailed["tags_note"].startswith("no tag reached the threshold: the closest, ")
    assert "interrogate_deepbooru_score_threshold 1" in detailed["tags_note"]


def test_bad_options_are_refused_and_change_nothing(serve) -> None:
    client = serve()
    before = client.get(OPTIONS).json()
    for bad in (
        {"interrogate_return_ranks": "maybe"},
        {"interrogate_deepbooru_score_threshold": 2},
        {"interrogate_clip_skip_categories": ["artists"]},
        {"interrogate_return_ranks": True, "interrogate_clip_dict_limit": -1},  # all or nothing
        {"api_enable_requests": True},  # set at start, not over the API
    ):
        response = client.post(OPTIONS, json=bad)
        assert response.status_code == 422, bad
        assert set(response.json()) == {"error", "detail", "body", "errors"}
    assert client.post(OPTIONS, json={"api_enable_requests": False}).status_code == 200  # unchanged: fine
    assert client.get(OPTIONS).json() == before


def test_options_that_could_poison_or_bloat_the_server_are_refused(serve, tmp_path: Path) -> None:
    path = tmp_path / "options.json"
    client = serve(options_file=path)
    surrogate = '{"sd_model_checkpoint": "\\ud800"}'  # valid JSON, not encodable as UTF-8
    response = client.post(OPTIONS, content=surrogate, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "unicode string" in response.text
    for huge in (
        {"deepbooru_filter_tags": "x, " * 5_000_000},
        {"interrogate_clip_skip_categories": ["tags"] * 3_000_000},
        {"interrogate_clip_skip_categories": ["t" * 300]},
    ):
        assert client.post(OPTIONS, json=huge).status_code == 422
    assert client.get(OPTIONS).status_code == 200
    assert not path.exists() or path.stat().st_size < 10_000  # nothing of it was saved
    assert serve(options_file=path).get(OPTIONS).status_code == 200  # and a restart serves


def test_an_options_change_that_cannot_be_saved_is_not_applied(serve, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    client = serve(options_file=tmp_path / "file" / "options.json")  # its folder is a file: no save possible
    before = client.get(OPTIONS).json()
    response = client.post(OPTIONS, json={"interrogate_return_ranks": True})
    assert response.status_code == 500 and "nothing was changed" in response.json()["detail"]
    assert client.get(OPTIONS).json() == before


def test_options_persist_across_restarts(serve, tmp_path: Path, interrogator: Interrogator) -> None:
    path = tmp_path / "options.json"
    serve(options_file=path).post(OPTIONS, json={"interrogate_clip_dict_limit": 7}).raise_for_status()
    assert serve(options_file=path).get(OPTIONS).json()["interrogate_clip_dict_limit"] == 7
    path.write_text("{broken")
    with pytest.raises(SettingsError, match=r"options\.json is unreadable"):
        create_app(interrogator, ServerSettings(options_file=path))


@contextmanager
def http_server(handler: object) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 in a background thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)  # type: ignore[arg-type]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(10)


@contextmanager
def file_server(directory: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    with http_server(handler) as url:
        yield url


def test_image_urls_are_off_by_default_and_local_ones_refused(serve, expected: dict[str, str]) -> None:
    with file_server(REPO / "data/images") as files:
        url = f"{files}/cat.jpg"
        _assert_error(serve(), {"image": url}, 500, "Requests not allowed")
        remote_only = serve(images=ImagePolicy(allow_urls=True))
        _assert_error(remote_only, {"image": url}, 500, "Request to local resource not allowed")
        _assert_error(remote_only, {"image": "http://localhost/x.png"}, 500, "Request to local resource not allowed")
        local = serve(images=ImagePolicy(allow_urls=True, allow_local_urls=True))
        assert local.post(INTERROGATE, json={"image": url}).json() == {"caption": expected["cat.jpg"]}
        _assert_error(local, {"image": f"{files}/missing.jpg"}, 500, "Invalid image url")
        _assert_error(local, {"image": f"{files}/SOURCES.md"}, 500, "Invalid image url")


def test_detailed_answer_and_health(serve, interrogator: Interrogator, expected: dict[str, str]) -> None:
    client = serve()
    detailed = client.post("/clip/v1/interrogate", json={"image": photo()}).json()
    assert detailed["caption"] == expected["cat.jpg"]
    assert [c["name"] for c in detailed["categories"]] == [c.name for c in interrogator.tables.categories]
    assert all(len(c["top"]) == 5 and c["top"][0]["score"] >= c["top"][-1]["score"] for c in detailed["categories"])
    assert {"decode", "preprocess", "queue", "encode", "rank", "total"} <= set(detailed["timings_ms"])
    health = client.get("/healthz").json()
    assert health["backend"] == "onnxruntime"
    assert (
        health["labels"]
        == sum(health["vocabulary"].values())
        == sum(len(c.labels) for c in interrogator.tables.categories)
    )
    assert health["vocabulary"]["tags"] == len(next(c for c in interrogator.tables.categories if c.tags).labels)


def test_openapi_document_is_served_and_valid(serve) -> None:
    client = serve()
    assert client.get("/docs").status_code == 404  # FastAPI's page would load its scripts from a CDN
    spec = client.get("/openapi.json").json()
    validate(spec)
    assert {INTERROGATE, OPTIONS, "/clip/v1/interrogate", "/healthz"} <= set(spec["paths"])


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port`, from /proc (no traffic)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_command_line_server_captions_a_real_photo_on_loopback_only(built_artifacts: Path, tmp_path: Path) -> None:
    models = device_set(built_artifacts.parent / "device" / "models")
    port = free_port()
    command = [sys.executable, "-m", "runtime.server", "--models", str(models), "--port", str(port)]
    command += ["--options-file", str(tmp_path / "options.json")]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _wait_until(up, 60)
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0
        caption = httpx.post(f"{url}{INTERROGATE}", json={"image": photo("astronaut.jpg")}, timeout=60).json()
        index = json.loads((models / VOCAB_DIR / "vocab.json").read_text())
        labels = {c.get("prefix", "") + label for c in index["categories"] for label in c["labels"]}
        parts = caption["caption"].split(", ")
        assert len(parts) >= 7 and all(part in labels for part in parts)
    finally:
        process.terminate()
        process.wait(20)


def test_the_command_line_names_bad_models_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime.server", "--models", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and "invoke fetch" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--queue", "-5"], "--queue must be 0 or more"),
        (["--max-body-mb", "-1"], "--max-body-mb must be above 0"),
        (["--queue-timeout", "0"], "--queue-timeout must be above 0"),
        (["--max-connections", "0"], "--max-connections must be above 0"),
        (["--unload-after", "-3"], "--unload-after takes a number of seconds above 0"),
        (["--api-auth-file", "EMPTY"], "is empty: it must hold user:password lines"),
    ],
)
def test_the_command_line_refuses_settings_that_would_refuse_every_request(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    (tmp_path / "EMPTY").write_text("\n")
    flags = [str(tmp_path / f) if f == "EMPTY" else f for f in flags]
    command = [sys.executable, "-m", "runtime.server", "--models", str(tmp_path), "--port", "0", *flags]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error:") and message in result.stderr


def test_long_thin_images_cost_no_more_than_a_photo(serve) -> None:
    """A 6000x1 PNG once scaled its short side to 224 and its long side with it (+2.4 GB); 40,000,000x1
    overflowed. Now only the part the center crop keeps is resized."""
    import resource

    client = serve()
    sizes = ((6000, 1), (1, 6000), (40_000_000, 1))
    bodies = [b64(png(Image.new("RGB", size, (90, 140, 200)))) for size in sizes]  # encoding a PNG is costly
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for size, body in zip(sizes, bodies, strict=True):
        answer = client.post(INTERROGATE, json={"image": body})
        assert answer.status_code == 200 and answer.json()["caption"], size
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 400  # the 40,000,000x1 image itself is 120 MB decoded


@contextmanager
def trickling_server(interval_s: float) -> Iterator[str]:
    """An HTTP server on loopback that sends a PNG's bytes one at a time, `interval_s` apart."""
    body = png(Image.new("RGB", (8, 8), (1, 2, 3)))

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for byte in body:
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(interval_s)

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Trickle) as url:
        yield f"{url}/slow.png"


def test_a_slow_image_url_meets_a_deadline_and_never_blocks_everyone(serve) -> None:
    policy = ImagePolicy(allow_urls=True, allow_local_urls=True, url_timeout_s=2)
    client = serve(images=policy, decoders=1, queue_timeout_s=1)
    with trickling_server(0.2) as slow, ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(client.post, INTERROGATE, json={"image": slow})
        time.sleep(0.3)  # the URL now holds the only decoder slot
        other = client.post(INTERROGATE, json={"image": photo()})
        assert other.status_code == 503 and "every image decoder stayed busy" in other.json()["detail"]
        answer = pending.result(timeout=30)
        assert answer.status_code == 500 and "not downloaded within 2 s" in answer.json()["detail"]
        assert time.monotonic() - started < 2 + 5 + 5  # the deadline, plus at most one read's wait
    assert client.post(INTERROGATE, json={"image": photo()}).status_code == 200


def test_urls_that_parsers_read_differently_or_that_hide_a_local_address_are_refused(serve) -> None:
    """Each is refused before any connection is made (no traffic leaves this machine)."""
    client = serve(images=ImagePolicy(allow_urls=True))
    for url in (
        "http://127.0.0.1:9/a\r\nHost: x",
        "http://exa mple.com/x.png",
        "http://127.0.0.1:7861\\@1.1.1.1/",
        "http://user:pass@127.0.0.1/x.png",
    ):
        _assert_error(client, {"image": url}, 500, "Invalid image url")
    for url in ("http://[64:ff9b::7f00:1]/x.png", "http://[::ffff:127.0.0.1]/x.png", "http://[2002:7f00:1::1]/x.png"):
        _assert_error(client, {"image": url}, 500, "Request to local resource not allowed")
    assert client.get("/healthz").status_code == 200


def test_max_megapixels_above_pillows_own_limit_takes_effect(interrogator: Interrogator) -> None:
    from PIL import Image as PillowImage

    create_app(interrogator, ServerSettings(images=ImagePolicy(max_pixels=300_000_000)))
    assert PillowImage.MAX_IMAGE_PIXELS >= 300_000_000  # Pillow refuses only past twice this


def test_icons_are_measured_by_the_images_they_hold_and_icns_is_refused(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ICO's directory once said 16x16 for a 12000x12000 PNG that Pillow decoded while opening (+360 MB)."""
    from PIL import ImageFile

    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image.size) or real_load(image))
    client = serve(images=ImagePolicy(max_pixels=1_000_000))
    hidden = ico_hiding(png_bomb(12000, 12000, rows=1))  # 144 MP behind a 16x16 entry, in 14 KB
    assert len(hidden) < 20_000
    detail = "Image too large: 12000x12000 is 144,000,000 pixels, the limit is 1,000,000"
    _assert_error(client, {"image": b64(hidden)}, 413, detail)
    assert (12000, 12000) not in decoded  # measured from the embedded header; its pixels never decoded
    _assert_error(client, {"image": b64(ico_hiding(dib_header(30_000, 30_000)))}, 413)
    icon = png(Image.new("RGB", (64, 64), (200, 40, 40)), format="ICO")
    assert client.post(INTERROGATE, json={"image": b64(icon)}).status_code == 200
    icns = png(Image.new("RGB", (64, 64), (200, 40, 40)), format="ICNS")
    _assert_error(client, {"image": b64(icns)}, 500, "Invalid encoded image")


def test_an_image_url_is_fetched_from_the_address_that_was_checked(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name resolves to a (pretend) global address for the check and to a local one a
    moment later. The fetch must go to the checked address. Both servers listen on loopback addresses."""
    from runtime import images

    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    hits: dict[str, int] = {"127.0.0.1": 0, "127.0.0.2": 0}
    body = (REPO / "data/images/cat.jpg").read_bytes()

    def handler(address: str) -> type:
        class Count(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits[address] += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Count

    servers = [http.server.ThreadingHTTPServer((address, port), handler(address)) for address in hits]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    real_getaddrinfo, answers = socket.getaddrinfo, iter(["127.0.0.2"])

    def rebinding(host: str, *args: object, **kwargs: object) -> list:
        if host == "rebind.test":  # first the checked address, then the local one
            host = next(answers, "127.0.0.1")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(images, "_global", lambda address: str(address) == "127.0.0.2")
    try:
        answer = serve(images=ImagePolicy(allow_urls=True)).post(
            INTERROGATE, json={"image": f"http://rebind.test:{port}/cat.jpg"}
        )
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert answer.status_code == 200, answer.text
    assert hits == {"127.0.0.1": 0, "127.0.0.2": 1}
