"""The FastAPI app: A1111's interrogate and options endpoints, clip-interrogator's extension API
(interrogator_api.py), the WD14 tagger extension's API when a tagger is served (tagger_api.py), a
structured answer, and a health check.

Blocking work (decoding, preprocessing, the encoder, ranking) runs in worker threads; the interrogator
lets one encode run at a time (one NPU), and the admission gate bounds how many requests wait for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from PIL import Image
from starlette.concurrency import run_in_threadpool

from runtime.classify import ClassifyAnswer
from runtime.interrogator import Interrogator
from runtime.npu import IdleUnloader
from runtime.server.auth import authenticator
from runtime.server.errors import install_error_handlers
from runtime.server.interrogator_api import ci_router
from runtime.server.limits import BodyBudget, RequestBodyLimits
from runtime.server.options import Options
from runtime.server.schemas import ClassifyRequest, DetailedResponse, Health, InterrogateRequest, InterrogateResponse
from runtime.server.service import SERVICE_STATE, InterrogationService, ServerSettings, Service
from runtime.server.tagger_api import tagger_router

MODELS = ("clip", "deepdanbooru")


def create_app(interrogator: Interrogator, settings: ServerSettings) -> FastAPI:
    """The whole service: the endpoints, A1111's error shape, body limits, and the idle unloader."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        unloader.start()
        yield
        unloader.stop()

    app = FastAPI(
        title="CLIP interrogator (A1111-compatible)",
        description="AUTOMATIC1111's /sdapi/v1/interrogate, answered by CLIP on an Axera NPU",
        version="1.0",
        lifespan=lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN, which a Pi offline cannot reach:
        # the OpenAPI document itself is served, for any viewer or client generator.
        docs_url=None,
        redoc_url=None,
    )
    # Our pixel limit is the one that counts: Pillow's own bomb guard (179 MP) would otherwise refuse
    # images that --max-megapixels allows. The service owns its process, so this global is ours to set.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, settings.images.max_pixels)
    install_error_handlers(app)
    app.add_middleware(
        RequestBodyLimits,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        budget=BodyBudget(settings.max_bodies_bytes),
        credentials=settings.credentials,
    )
    unloader = IdleUnloader(*include_interrogation(app, interrogator, settings).resident_models())
    return app


def include_interrogation(app: FastAPI, interrogator: Interrogator, settings: ServerSettings) -> InterrogationService:
    """The endpoints and the state they share, on `app`: this service's own app, or one a user already runs
    (see README: embedding; that app installs the error handlers if it wants A1111's error bodies).
    Fails here, before anything is served, when a setting or the options file cannot be used."""
    service = InterrogationService(interrogator, settings)
    setattr(app.state, SERVICE_STATE, service)
    auth = [Depends(authenticator(settings.credentials))] if settings.credentials else []
    app.include_router(a1111_router, dependencies=auth)
    app.include_router(ci_router, dependencies=auth)
    app.include_router(detailed_router, dependencies=auth)
    app.include_router(tagger_router, dependencies=auth)
    app.include_router(health_router)  # open even with auth: a supervisor's probe has no password
    return service


a1111_router = APIRouter()  # AUTOMATIC1111's interrogate and options endpoints, answered as A1111 does
detailed_router = APIRouter()
health_router = APIRouter()


@a1111_router.post("/sdapi/v1/interrogate", response_model=InterrogateResponse)
async def interrogate(request: InterrogateRequest, service: Service) -> InterrogateResponse:
    """A1111's interrogate: `clip` gives a caption, `deepdanbooru` comma-separated tags."""
    if request.model not in MODELS:
        raise HTTPException(404, "Model not found")
    with service.gate.admitted():
        caption = await run_in_threadpool(service.answer, request)
    return InterrogateResponse(caption=caption)


@a1111_router.get("/sdapi/v1/options", response_model=Options)
async def get_options(service: Service) -> dict[str, Any]:
    return service.options.get()


@a1111_router.post("/sdapi/v1/options")
async def set_options(changes: dict[str, Any], service: Service) -> None:
    """Set any of the options; unknown keys are ignored, as A1111 does."""
    await run_in_threadpool(service.options.update, changes)


@detailed_router.post("/clip/v1/interrogate", response_model=DetailedResponse)
async def interrogate_detailed(request: InterrogateRequest, service: Service) -> DetailedResponse:
    """Every category's picks and best labels with their cosines, the tags, and where the time went."""
    with service.gate.admitted():
        return await run_in_threadpool(service.detailed, request)


@detailed_router.post("/clip/v1/classify", response_model=ClassifyAnswer)
async def classify(request: ClassifyRequest, service: Service) -> ClassifyAnswer:
    """The image against labels named in the request: `categories`, or the shorthand `labels` (one
    category, every label ranked). New labels are encoded on the NPU once, then cached."""
    with service.gate.admitted():
        return await run_in_threadpool(service.classify, request.image, request.question())


@health_router.get("/healthz", response_model=Health)
async def health(service: Service) -> Health:
    return service.health()
