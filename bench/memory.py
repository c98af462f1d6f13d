"""Memory: peak RSS of our server (ViT-B/32-shaped image model, a 100k-label vocabulary, after serving
clip, deepdanbooru and detailed requests) vs a process that does the manual design's work: load
transformers' CLIPModel (both towers, to apply the projections), encode the image and 100 labels.

Peak RSS is each process's VmHWM. Random weights (memory does not depend on their values). Here an
onnxruntime session stands in for the NPU and holds the image model inside our process; on the device
the NPU's own memory holds it, for both designs. So the manual process is measured twice: as it is
(CLIPModel only) and like for like (CLIPModel plus the same image-model stand-in), the target's ratio.
Target: ours <= 0.5x manual.

    python bench/memory.py [--labels 100000] [--json]
"""

from __future__ import annotations

import base64
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from harness import DEFAULT_CACHE, REPO, arguments, emit, peak_rss_mb, server_models, verdict
from service import start_server

from tests.loopback import free_port

TARGET_RATIO = 0.5
MANUAL_LABELS = 100

_MANUAL = """
import sys, torch
from pathlib import Path
sys.path.insert(0, {repo!r})
from PIL import Image
from modeling.loading import load_model
from modeling.model_config import ModelConfig

loaded = load_model(ModelConfig(id="builtin:random-vit-b-32"), Path({cache!r}))
if {standin!r}:
    import numpy as np, onnxruntime as ort
    npu = ort.InferenceSession({standin!r}, providers=["CPUExecutionProvider"])
    npu.run(None, {{"pixel_values": np.zeros((1, 3, 224, 224), np.float32)}})
with torch.inference_mode():
    pixels = loaded.image_processor(images=Image.open({photo!r}).convert("RGB"), return_tensors="pt")
    image = loaded.model.get_image_features(**pixels)
    tokens = loaded.tokenizer([f"a photo of label {{i}}" for i in range({labels})], padding=True, return_tensors="pt")
    text = loaded.model.get_text_features(**tokens)
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]) / 1024)
"""


def ours(labels: int) -> float:
    models = server_models(labels)
    photo = base64.b64encode((REPO / "data/images/grace_hopper.jpg").read_bytes()).decode()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(models, port, Path(tmp) / "options.json")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
                for _ in range(3):
                    for model in ("clip", "deepdanbooru"):
                        client.post("/sdapi/v1/interrogate", json={"image": photo, "model": model}).raise_for_status()
                    client.post("/clip/v1/interrogate", json={"image": photo}).raise_for_status()
            return peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(30)


def manual(standin: str) -> float:
    script = _MANUAL.format(
        repo=str(REPO),
        cache=str(DEFAULT_CACHE / "manual-model"),
        photo=str(REPO / "data/images/grace_hopper.jpg"),
        labels=MANUAL_LABELS,
        standin=standin,
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    args = arguments(__doc__, labels=100_000)
    image_model = str(server_models(args.labels) / "image_encoder.onnx")
    ours_mb, bare_mb, manual_mb = ours(args.labels), manual(""), manual(image_model)
    figures = {
        "labels": args.labels,
        "ours_peak_rss_mb": round(ours_mb, 1),
        "manual_clipmodel_only_peak_rss_mb": round(bare_mb, 1),
        "manual_like_for_like_peak_rss_mb": round(manual_mb, 1),
        "ratio": round(ours_mb / manual_mb, 3),
        "ratio_to_clipmodel_only": round(ours_mb / bare_mb, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ours_mb / manual_mb <= TARGET_RATIO,
    }
    emit(
        figures,
        args.json,
        "peak RSS (VmHWM), ViT-B/32 shapes, random weights",
        ("process", "MB"),
        [
            (f"ours: the server, {args.labels:,} labels, after 9 requests (image model stand-in)", f"{ours_mb:.0f}"),
            (f"manual, like for like: CLIPModel, image + {MANUAL_LABELS} labels, same stand-in", f"{manual_mb:.0f}"),
            ("manual as it is: CLIPModel only", f"{bare_mb:.0f}"),
        ],
        f"ratio {figures['ratio']:.3f} (to CLIPModel only {figures['ratio_to_clipmodel_only']:.3f}); "
        f"target <= {TARGET_RATIO}: {verdict(figures['meets_target'])}",
    )


if __name__ == "__main__":
    main()
