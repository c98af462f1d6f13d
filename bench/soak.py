"""Soak: the real server (`python -m runtime.server`, ViT-B/32 shapes, random weights) under bounded
concurrent clients for several minutes, with good requests (clip, deepdanbooru, detailed) mixed with
bad ones (garbage, truncated images, decompression bombs, oversized bodies, unknown models). Reports
the answers by status, any 5xx beyond the documented ones, and resident memory over time (drift from
the first sample after warm-up to the last).

    python bench/soak.py [--minutes 3] [--clients 8] [--labels 10000] [--json]
"""

from __future__ import annotations

import base64
import io
import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from harness import REPO, arguments, emit, rss_mb, server_models
from service import start_server

from tests.hostile_images import png_bomb
from tests.loopback import free_port

DOCUMENTED_500 = {"Invalid encoded image", "Invalid image url", "Requests not allowed"}


def requests_mix() -> list[tuple[str, str, dict | bytes]]:
    photos = [p.read_bytes() for p in sorted((REPO / "data/images").glob("*.jpg"))]
    good = [base64.b64encode(p).decode() for p in photos]
    png = io.BytesIO()
    from PIL import Image

    Image.open(io.BytesIO(photos[0])).save(png, "PNG")
    mix: list[tuple[str, str, dict | bytes]] = []
    for image in good:
        mix += [("good", "/sdapi/v1/interrogate", {"image": image})] * 3
        mix.append(("good", "/sdapi/v1/interrogate", {"image": image, "model": "deepdanbooru"}))
        mix.append(("good", "/clip/v1/interrogate", {"image": image}))
    mix += [
        ("bad", "/sdapi/v1/interrogate", {"image": "not an image"}),
        ("bad", "/sdapi/v1/interrogate", {"image": base64.b64encode(png.getvalue()[:5000]).decode()}),
        ("bad", "/sdapi/v1/interrogate", {"image": base64.b64encode(png_bomb(20_000, 20_000, rows=8)).decode()}),
        ("bad", "/sdapi/v1/interrogate", {"image": good[0], "model": "blip"}),
        ("bad", "/sdapi/v1/interrogate", b'{"image": "' + b"A" * 40_000_000 + b'"}'),
        ("bad", "/sdapi/v1/interrogate", b"{broken json"),
    ]
    return mix


def main() -> None:
    args = arguments(__doc__, minutes=3.0, clients=8, labels=10_000)

    models = server_models(args.labels)
    mix = requests_mix()
    port = free_port()
    statuses: Counter[str] = Counter()
    unexpected: list[str] = []
    samples: list[tuple[float, float]] = []
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(models, port, Path(tmp) / "options.json")
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        stop_at = started + args.minutes * 60

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=url, timeout=120) as http:
                while time.monotonic() < stop_at:
                    kind, path, body = rng.choice(mix)
                    if isinstance(body, bytes):
                        response = http.post(path, content=body, headers={"content-type": "application/json"})
                    else:
                        response = http.post(path, json=body)
                    status = response.status_code
                    detail = response.json().get("detail") if status >= 400 else None
                    with lock:
                        statuses[f"{kind} {status}"] += 1
                        if (status >= 500 and status != 503 and detail not in DOCUMENTED_500) or (
                            kind == "good" and status != 200
                        ):
                            unexpected.append(f"{path} {status} {str(detail)[:80]}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        try:
            for thread in threads:
                thread.start()
            while any(t.is_alive() for t in threads):
                samples.append((time.monotonic() - started, rss_mb(server.pid)))
                time.sleep(5)
            for thread in threads:
                thread.join()
            alive = httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        finally:
            server.terminate()
            server.wait(30)
    warm = [rss for t, rss in samples if t >= 30] or [rss for _, rss in samples]
    # A leak keeps growing; fragmentation levels off: the second half's growth and the trajectory tell which.
    second_half = [rss for t, rss in samples if t >= args.minutes * 30] or warm
    by_minute: dict[int, float] = {}
    for t, rss in samples:
        by_minute.setdefault(int(t // 60), round(rss, 1))
    figures = {
        "minutes": args.minutes,
        "clients": args.clients,
        "labels": args.labels,
        "requests": sum(statuses.values()),
        "by_status": dict(sorted(statuses.items())),
        "unexpected": len(unexpected),
        "unexpected_examples": unexpected[:5],
        "rss_mb_after_warmup": round(warm[0], 1),
        "rss_mb_end": round(warm[-1], 1),
        "rss_mb_max": round(max(warm), 1),
        "rss_drift_mb": round(warm[-1] - warm[0], 1),
        "rss_drift_second_half_mb": round(second_half[-1] - second_half[0], 1),
        "rss_mb_per_minute": list(by_minute.values()),
        "alive_after": alive,
    }
    emit(
        figures,
        args.json,
        f"soak: {args.minutes:g} min, {args.clients} clients, {args.labels:,} labels",
        ("figure", "value"),
        list(figures.items()),
    )


if __name__ == "__main__":
    main()
