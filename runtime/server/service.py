"""What every endpoint shares: the interrogator, the admission gate, the decoder slots, the options, the
prompt builder and the classifier (InterrogationService), and how an endpoint is given it (`Service`).

Its own module so that the routers (app.py's and interrogator_api.py's) import it and app.py imports the
routers: no import circle between the app and an API it includes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, HTTPException, Request
from PIL import Image

from runtime.classify import Classifier, ClassifyAnswer, ClassifyLimits, Question
from runtime.errors import NpuBusy, ServerBusy
from runtime.images import Draft, ImagePolicy, decode_image
from runtime.interrogator import Interrogation, Interrogator, Scores, format_tags
from runtime.label_cache import CacheSettings
from runtime.label_tables import normalize
from runtime.npu import ResidentModel
from runtime.prompt_modes import PromptBuilder, PromptMode, PromptResult, PromptSettings
from runtime.server.limits import AdmissionGate
from runtime.server.options import OptionsStore
from runtime.server.schemas import DetailedResponse, Health, InterrogateRequest, QueueHealth, TaggerHealth
from runtime.tagger import TagAnswer, Tagger, TagThresholds

SERVICE_STATE = "interrogation"  # where include_interrogation keeps the service on app.state


@dataclass(frozen=True)
class ServerSettings:
    images: ImagePolicy = field(default_factory=ImagePolicy)
    max_body_bytes: int = 32 * 1024 * 1024
    max_bodies_bytes: int = 128 * 1024 * 1024  # all bodies in flight together; past it, a 503
    body_timeout_s: float = 60.0  # a body still arriving after this gets a 408
    queue_size: int = 64  # requests that may wait while one encodes
    decoders: int = max(2, os.cpu_count() or 2)  # images decoded at once
    queue_timeout_s: float = 60.0  # longest wait for the encoder before a 503
    credentials: dict[str, str] = field(default_factory=dict)  # user -> password; empty: no auth
    options_file: Path | None = None
    prompt: PromptSettings = field(default_factory=PromptSettings)  # clip-interrogator's modes
    model_names: tuple[str, ...] = ()  # more names the served model answers to (/interrogator/models)
    refuse_other_models: bool = False  # a clip_model_name not served: 404 (else the served model answers)
    classify: ClassifyLimits = field(default_factory=ClassifyLimits)  # /clip/v1/classify's bounds
    label_cache: CacheSettings = field(default_factory=CacheSettings)  # its labels' embeddings kept
    tagger: Path | None = None  # a WD tagger's folder: /tagger/v1 and A1111's `deepdanbooru` answer from it


class InterrogationService:
    """What the endpoints share: the interrogator, the admission gate (requests inside, one encoding),
    the decoder slots (decoded images are the big allocations: a few at a time) and the options."""

    def __init__(self, interrogator: Interrogator, settings: ServerSettings) -> None:
        self.interrogator = interrogator
        self.settings = settings
        self.gate = AdmissionGate(1 + settings.queue_size)
        self.decoders = threading.BoundedSemaphore(settings.decoders)
        fixed = {
            "api_enable_requests": settings.images.allow_urls,
            "api_forbid_local_requests": not settings.images.allow_local_urls,
        }
        self.options = OptionsStore(settings.options_file, [c.name for c in interrogator.tables.categories], fixed)
        self.prompts = PromptBuilder(interrogator, settings.prompt)
        self.classifier = Classifier.open(interrogator, settings.classify, settings.label_cache)
        self.tagger = Tagger(settings.tagger, interrogator.clip.npu) if settings.tagger else None
        self.started = time.time()

    def resident_models(self) -> list[ResidentModel]:
        """The models the idle unloader watches: the encoders, and the tagger when one is served."""
        clip = self.interrogator.clip
        return [clip.image_model, clip.text_model, *([self.tagger.model] if self.tagger else [])]

    def model_names(self) -> list[str]:
        """What /interrogator/models lists: the served model's id, then any names it also answers to."""
        return list(dict.fromkeys((self.interrogator.clip.info.model, *self.settings.model_names)))

    def pixels(self, image_field: str) -> tuple[np.ndarray, dict[str, float]]:
        """The request's image as the CLIP encoder takes it."""
        clip = self.interrogator.clip
        return self._prepared(image_field, clip.preprocess, clip.draft)

    def _prepared(
        self, image_field: str, prepare: Callable[[Image.Image], np.ndarray], draft: Draft | None = None
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Decode (never an unbounded wait for a slot: slow image URLs may hold them all) and `prepare`."""
        begin, wait = time.perf_counter(), self.settings.queue_timeout_s
        if not self.decoders.acquire(timeout=wait):
            raise ServerBusy(f"Server busy: every image decoder stayed busy for {wait:g} s")
        try:
            image = decode_image(image_field, self.settings.images, draft)
            decoded = time.perf_counter()
            pixels = prepare(image)
            del image
        finally:
            self.decoders.release()
        return pixels, {"decode": (decoded - begin) * 1e3, "preprocess": (time.perf_counter() - decoded) * 1e3}

    def tagged(self, image_field: str, threshold: float) -> TagAnswer:
        """The served tagger's answer for the image, one bar for general and character tags."""
        if self.tagger is None:
            raise HTTPException(404, "Model not found")
        pixels, _ = self._prepared(image_field, self.tagger.pixels)
        with _busy_is_503():
            probabilities = self.tagger.probabilities(pixels, wait=self.settings.queue_timeout_s)
        return self.tagger.tags.answer(probabilities, TagThresholds(threshold, threshold))

    def score(self, image_field: str) -> tuple[Scores, dict[str, float]]:
        """The image against every label: encode and the coarse rank."""
        pixels, prepared = self.pixels(image_field)
        with _busy_is_503():
            scores, timings = self.interrogator.score(pixels, wait=self.settings.queue_timeout_s)
        return scores, {**timings, **prepared}

    def classify(self, image_field: str, question: Question) -> ClassifyAnswer:
        """The image against the labels the question names (runtime/classify.py)."""
        self.classifier.check(question)  # before decoding: a question over the bounds is refused at once
        pixels, prepared = self.pixels(image_field)
        wait = self.settings.queue_timeout_s
        with _busy_is_503():
            embedding, timings = self.interrogator.embed(pixels, wait=wait)
            answer = self.classifier.classify(normalize(embedding), question, wait=wait)
        answer.timings_ms = {**{k: round(v, 2) for k, v in {**timings, **prepared}.items()}, **answer.timings_ms}
        return answer

    def prompt(self, image_field: str, mode: PromptMode) -> PromptResult:
        """clip-interrogator's prompt in `mode`; the text encoder comes onto the NPU when the mode needs it."""
        self.prompts.require(mode)  # before decoding: a vocabulary without the lists is one clear error
        scores, timings = self.score(image_field)
        with _busy_is_503():
            result = self.prompts.prompt(scores, mode, wait=self.settings.queue_timeout_s)
        result.timings_ms = {**timings, **result.timings_ms}
        return result

    def analyze(self, image_field: str) -> dict[str, dict[str, float]]:
        self.prompts.require(None)
        return self.prompts.analyze(self.score(image_field)[0])

    def answer(self, request: InterrogateRequest) -> str:
        """A1111's answer: the caption (`clip`) or the tags (`deepdanbooru`)."""
        if request.model == "deepdanbooru" and self.tagger is not None:
            options = self.options.tag_options()
            answer = self.tagged(request.image, options.threshold)
            return format_tags(answer.tags, options)  # ratings left out, as A1111 does
        scores, _ = self.score(request.image)
        if request.model == "clip":
            only_the_caption = replace(self.options.caption_options(), every_category=False)
            return self.interrogator.caption(scores, only_the_caption)[0]
        return self.interrogator.tags(scores, self.options.tag_options())

    def detailed(self, request: InterrogateRequest) -> DetailedResponse:
        begin = time.perf_counter()
        scores, timings = self.score(request.image)
        rank_started = time.perf_counter()
        interrogator, tag_options = self.interrogator, self.options.tag_options()
        caption, results = interrogator.caption(scores, self.options.caption_options())
        tags = interrogator.tags(scores, tag_options)
        note = "" if tags else interrogator.tags_note(scores, tag_options)
        timings["rank"] += (time.perf_counter() - rank_started) * 1e3
        timings["total"] = (time.perf_counter() - begin) * 1e3
        return DetailedResponse.of(Interrogation(caption, results, timings), tags=tags, tags_note=note)

    def _tagger_health(self) -> TaggerHealth | None:
        if self.tagger is None:
            return None
        tagger = self.tagger
        return TaggerHealth(
            name=tagger.name, folder=str(tagger.folder), file=tagger.file, tags=len(tagger.tags.names),
            model=tagger.model.state(),
        )  # fmt: skip

    def health(self) -> Health:
        clip, gate, categories = self.interrogator.clip, self.gate, self.interrogator.tables.categories
        image = clip.image_model.state()
        return Health(
            status="ok",
            backend=image.get("backend"),
            provider=image.get("provider"),
            model=clip.info.model,
            models={"dir": str(clip.models_dir), "image": clip.files["image"]},
            image_encoder=image,
            text_encoder=clip.text_model.state(),
            npu={"lock_file": str(clip.npu.lock_file) if clip.npu.lock_file else None, **clip.npu.stats.to_json()},
            vocabulary={c.name: len(c.labels) for c in categories},
            labels=sum(len(c.labels) for c in categories),
            queue=QueueHealth(inside=gate.inside, capacity=gate.capacity, served=gate.served, refused=gate.refused),
            label_cache=self.classifier.cache.health(),
            tagger=self._tagger_health(),
            uptime_s=round(time.time() - self.started, 1),
            pid=os.getpid(),
        )


@contextmanager
def _busy_is_503() -> Iterator[None]:
    """The NPU busy past the queue's wait (another program holds it): a 503 to retry, as a full queue."""
    try:
        yield
    except NpuBusy as exc:
        raise ServerBusy(f"Server busy: {exc}; retry shortly") from exc


def current_service(request: Request) -> InterrogationService:
    """What every endpoint is given: the service `include_interrogation` put on the app."""
    return getattr(request.app.state, SERVICE_STATE)


Service = Annotated[InterrogationService, Depends(current_service)]
