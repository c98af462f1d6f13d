"""A1111's interrogate endpoints inside your own FastAPI app (an SD server, say), sharing its NPU lock."""

import threading
from pathlib import Path

from fastapi import FastAPI

from runtime.embedded import load_interrogator
from runtime.server.app import ServerSettings, include_interrogation
from runtime.server.errors import install_error_handlers


def build_app(models: Path, unet_lock: threading.Lock) -> FastAPI:
    app = FastAPI()  # your app, with your own routes
    # Every image-encoder call holds your lock; the encoder leaves the NPU after 10 idle minutes.
    interrogator = load_interrogator(models, host_lock=unet_lock, unload_after=600)
    install_error_handlers(app)  # optional: A1111's error bodies ({"error": ..., "detail": ...})
    include_interrogation(app, interrogator, ServerSettings())  # the endpoints, sharing its state
    return app
