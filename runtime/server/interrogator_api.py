"""clip-interrogator's A1111 extension API (pharmapsychotic/clip-interrogator-ext,
scripts/clip_interrogator_ext.py, `mount_interrogator_api`): /interrogator/models, /interrogator/prompt,
/interrogator/analyze, plus /interrogator/unload, asked for in the extension's pull requests.

Request and answer shapes are the extension's (`InterrogatorAnalyzeRequest`, `InterrogatorPromptRequest`,
`{"prompt": ...}`, the five analyze mappings); its refusals are HTTPExceptions, so they come out in A1111's
error shape like every other refusal here. Auth, body limits and the admission gate are the A1111 routes'.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from runtime.prompt_modes import PromptMode
from runtime.server.errors import quoted
from runtime.server.service import Service

# What the extension's requests default to, and so what most clients send.
EXTENSION_DEFAULT_MODEL = "ViT-L-14/openai"
ci_router = APIRouter()


class InterrogatorAnalyzeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image: str = Field("", description="Image to work on, must be a Base64 string containing the image's data.")
    clip_model_name: str = Field(EXTENSION_DEFAULT_MODEL, description="The served model answers any name.")


class InterrogatorPromptRequest(InterrogatorAnalyzeRequest):
    mode: str = Field("fast", description="One of: best, fast, classic, negative.")


class InterrogatorPromptResponse(BaseModel):
    prompt: str
    text_encodes: int  # not in the extension's answer: what `best` and `negative` cost
    timings_ms: dict[str, float]


class InterrogatorAnalyzeResponse(BaseModel):
    medium: dict[str, float]
    artist: dict[str, float]
    movement: dict[str, float]
    trending: dict[str, float]
    flavor: dict[str, float]


class UnloadResponse(BaseModel):
    image_encoder: str  # unloaded, or what it is now when a running request kept it
    text_encoder: str
    waited_for: int = 0  # requests that were running when the unload came, each waited for to its end
    waited_ms: float = 0.0


def _check_model(service: Service, name: str) -> None:
    """A request for another model is answered by the served one, unless the server refuses them."""
    if service.settings.refuse_other_models and name not in service.model_names():
        raise HTTPException(
            404, f"Model not found: {quoted(name)}; this server serves {', '.join(service.model_names())}"
        )


def _mode(name: str) -> PromptMode:
    try:
        return PromptMode(name)
    except ValueError:
        raise HTTPException(422, f"Unknown mode {quoted(name)}: one of best, fast, classic, negative") from None


@ci_router.get("/interrogator/models", response_model=list[str])
async def models(service: Service) -> list[str]:
    """The served model (the extension lists every open_clip model it could load)."""
    return service.model_names()


@ci_router.post("/interrogator/prompt", response_model=InterrogatorPromptResponse)
async def prompt(request: InterrogatorPromptRequest, service: Service) -> InterrogatorPromptResponse:
    _check_model(service, request.clip_model_name)
    mode = _mode(request.mode)
    with service.gate.admitted():
        result = await run_in_threadpool(service.prompt, request.image, mode)
    return InterrogatorPromptResponse(
        prompt=result.prompt,
        text_encodes=result.text_encodes,
        timings_ms={k: round(v, 2) for k, v in result.timings_ms.items()},
    )


@ci_router.post("/interrogator/analyze", response_model=InterrogatorAnalyzeResponse)
async def analyze(request: InterrogatorAnalyzeRequest, service: Service) -> InterrogatorAnalyzeResponse:
    _check_model(service, request.clip_model_name)
    with service.gate.admitted():
        ranks = await run_in_threadpool(service.analyze, request.image)
    return InterrogatorAnalyzeResponse(**ranks)


@ci_router.post("/interrogator/unload", response_model=UnloadResponse)
async def unload(service: Service) -> UnloadResponse:
    """Frees the NPU: every request running when it came ends first (a best prompt's chain would load the
    text encoder again between its steps), then both encoders leave; the next request loads them again."""
    clip = service.interrogator.clip
    started = time.monotonic()
    waited_for, _ = await service.gate.finish_running(service.settings.queue_timeout_s)
    wait = max(service.settings.queue_timeout_s - (time.monotonic() - started), 0.0)
    image, text = await run_in_threadpool(lambda: (clip.image_model.unload(wait), clip.text_model.unload(wait)))
    return UnloadResponse(
        image_encoder="unloaded" if image or not clip.image_model.loaded else "loaded",
        text_encoder="unloaded" if text or not clip.text_model.loaded else "loaded",
        waited_for=waited_for,
        waited_ms=round((time.monotonic() - started) * 1e3, 1),
    )
