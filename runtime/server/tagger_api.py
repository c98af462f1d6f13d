"""The WD14 tagger extension's API (toriato/stable-diffusion-webui-wd14-tagger, tagger/api.py and
tagger/api_models.py), which scripts and webuiapi's TaggerInterface call: POST /tagger/v1/interrogate
`{image, model, threshold}` -> `{"caption": {<every rating>: p, <each tag at or above threshold>: p}}`
(tags best first, named as selected_tags.csv names them), a model not served -> 404 "Model not found";
GET /tagger/v1/interrogators -> `{"models": [...]}`. Auth, body limits and the admission gate are the
A1111 routes'.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from runtime.server.service import Service

tagger_router = APIRouter(prefix="/tagger/v1")


class TaggerInterrogateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image: str = Field("", description="Image to work on, must be a Base64 string containing the image's data.")
    model: str = Field(description="The interrogate model used (GET /tagger/v1/interrogators lists them).")
    threshold: float = Field(0.35, ge=0, le=1)


class TaggerInterrogateResponse(BaseModel):
    caption: dict[str, float] = Field(description="Every rating, then each tag at or above the threshold.")


class InterrogatorsResponse(BaseModel):
    models: list[str]


@tagger_router.post("/interrogate", response_model=TaggerInterrogateResponse)
async def interrogate(request: TaggerInterrogateRequest, service: Service) -> TaggerInterrogateResponse:
    if not request.image:
        raise HTTPException(404, "Image not found")
    if service.tagger is None or request.model != service.tagger.name:
        raise HTTPException(404, "Model not found")
    with service.gate.admitted():
        answer = await run_in_threadpool(service.tagged, request.image, request.threshold)
    return TaggerInterrogateResponse(caption={**answer.ratings, **answer.tags})


@tagger_router.get("/interrogators", response_model=InterrogatorsResponse)
async def interrogators(service: Service) -> InterrogatorsResponse:
    return InterrogatorsResponse(models=[service.tagger.name] if service.tagger else [])
