"""POST /sdapi/v1/interrogate in a Flask app (or any server): one function call per request."""

import threading
from pathlib import Path

from flask import Flask, jsonify, request

from runtime.embedded import caption, load_interrogator
from runtime.errors import InvalidImage, NpuBusy
from runtime.server.errors import http_status


def build_app(models: Path, unet_lock: threading.Lock) -> Flask:
    app = Flask(__name__)
    interrogator = load_interrogator(models, host_lock=unet_lock)

    @app.post("/sdapi/v1/interrogate")
    def interrogate():  # answers as A1111 does: {"caption": "..."}
        body = request.get_json(force=True, silent=True) or {}
        try:
            text = caption(interrogator, body.get("image", ""), model=body.get("model", "clip"), wait=60)
        except InvalidImage as exc:
            return jsonify(detail=str(exc)), http_status(exc)  # 413 too large, 500 undecodable, as A1111
        except NpuBusy as exc:
            return jsonify(detail=f"Server busy: {exc}"), 503
        return jsonify(caption=text)

    return app
