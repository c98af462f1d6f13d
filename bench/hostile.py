"""Hostile clients against the real server (`python -m runtime.server`, ViT-B/32 shapes, random weights):
for each attack the hardening issue reproduced, the answers, the time until they came, and the server's
peak resident memory (VmHWM, which only grows: attacks run from the cheapest up, each row shows the
growth it caused). Loopback only.

    python bench/hostile.py [--json]
"""

from __future__ import annotations

import base64
import io
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from harness import arguments, emit, peak_rss_mb, server_models
from PIL import Image
from service import start_server

from tests.hostile_images import ico_hiding, png_bomb
from tests.loopback import free_port

USER, PASSWORD = "bench", "s3cret"
MB = 1024 * 1024


def _head(port: int, length: int, auth: bool) -> bytes:
    lines = [
        "POST /sdapi/v1/interrogate HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        "Connection: close",
    ]
    if auth:
        lines.append("Authorization: Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(sock: socket.socket) -> str:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError as exc:
        return type(exc).__name__ if not data else data.split()[1].decode()
    return data.split()[1].decode() if data else "closed"


def big_bodies(port: int, count: int, size: int, auth: bool) -> Counter:
    """`count` clients at once, each sending a `size`-byte JSON body; their answers by status."""
    body = b'{"image": "' + b"A" * (size - 14) + b'"}'

    def one(_: int) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            try:
                sock.sendall(_head(port, len(body), auth))
                sock.sendall(body)
            except OSError:
                pass  # answered before the body was all sent: read the answer
            return _status(sock)

    with ThreadPoolExecutor(count) as pool:
        return Counter(pool.map(one, range(count)))


def slowloris(port: int, sockets: int) -> Counter:
    """`sockets` connections sending part of a head and then nothing; meanwhile a client asks /healthz."""
    held = []
    for _ in range(sockets):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"POST /sdapi/v1/interrogate HTTP/1.1\r\nHost: x\r\n")
        held.append(sock)
    time.sleep(0.5)
    answers = Counter({f"healthz {httpx.get(f'http://127.0.0.1:{port}/healthz', timeout=30).status_code}": 1})
    for sock in held:
        answers[f"slow socket {_status(sock)}"] += 1
        sock.close()
    return answers


def image_request(port: int, data: bytes) -> Counter:
    body = {"image": base64.b64encode(data).decode()}
    answer = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/interrogate", json=body, auth=(USER, PASSWORD), timeout=120)
    return Counter({str(answer.status_code): 1})


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(out, "PNG")
    return out.getvalue()


def main() -> None:
    args = arguments(__doc__)
    models = server_models(1000)
    ico = ico_hiding(png_bomb(12000, 12000))
    thin = [_png((6000, 1)), _png((40_000_000, 1))]
    attacks: list[tuple[str, Callable[[int], Counter]]] = [
        ("6: 260 slowloris sockets", lambda port: slowloris(port, 260)),
        ("5: 40 unauthenticated 30 MB bodies", lambda port: big_bodies(port, 40, 30 * MB, auth=False)),
        ("3: ICO hiding a 12000x12000 PNG", lambda port: image_request(port, ico)),
        ("4: 6000x1 and 40,000,000x1 PNGs", lambda port: image_request(port, thin[0]) + image_request(port, thin[1])),
        ("5: 100 concurrent 30 MB bodies", lambda port: big_bodies(port, 100, 30 * MB, auth=True)),
    ]
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        server = start_server(
            models,
            port,
            Path(scratch) / "options.json",
            "--api-auth",
            f"{USER}:{PASSWORD}",
            "--max-connections",
            "256",
            "--head-timeout",
            "5",
        )
        try:
            peak = peak_rss_mb(server.pid)
            rows.append(("started (1000 labels)", "", "", f"{peak:.0f}", ""))
            for name, attack in attacks:
                started = time.perf_counter()
                answers = attack(port)
                seconds = time.perf_counter() - started
                now = peak_rss_mb(server.pid)
                shown = ", ".join(f"{status} x{n}" for status, n in sorted(answers.items()))
                rows.append((name, shown, f"{seconds:.2f}", f"{now:.0f}", f"+{now - peak:.0f}"))
                figures[name] = {"answers": dict(answers), "seconds": round(seconds, 3), "peak_rss_mb": round(now, 1)}
                peak = now
            alive = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code
        finally:
            server.terminate()
            server.wait(30)
    figures["healthz_after"] = alive
    emit(
        figures,
        args.json,
        "Hostile clients (server peak RSS, VmHWM)",
        ("attack", "answers", "s", "peak MB", "grew"),
        rows,
        footer=f"/healthz after all of them: {alive}",
    )


if __name__ == "__main__":
    main()
