"""The service's request and answer shapes, one model each: the endpoints answer with them, and
`invoke serve --status` reads /healthz through Health."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from runtime.answers import InterrogationAnswer
from runtime.classify import Question, QuestionCategory


class InterrogateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image: str = Field("", description="the image: base64, or a data:image/...;base64, URL")
    model: str = Field("clip", description="clip (caption) or deepdanbooru (tags)")


class ClassifyRequest(BaseModel):
    """`categories`, or the shorthand `labels` (with a `template`): one category, every label ranked."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field("", description="the image: base64, or a data:image/...;base64, URL")
    categories: list[QuestionCategory] | None = None
    labels: list[str] | None = None
    template: str = Field("{}", description="with `labels`: each label is put in it at {}")

    _question: Question | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_question(self) -> ClassifyRequest:
        if (self.categories is None) == (self.labels is None):
            raise ValueError("send `categories` (a list of {name, labels, ...}) or `labels` (a list of strings)")
        if self.categories is not None and self.template != "{}":
            raise ValueError("`template` goes with `labels`; each category has its own")
        try:
            if self.labels is not None:
                self._question = Question.of_labels(self.labels, self.template)
            else:
                self._question = Question(categories=self.categories or [])
        except ValidationError as exc:  # the shorthand's one category, or the whole question, as a request error
            raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        return self

    def question(self) -> Question:
        assert self._question is not None  # set by the validator
        return self._question


class InterrogateResponse(BaseModel):
    caption: str


class DetailedResponse(InterrogationAnswer):
    tags: str
    tags_note: str = ""  # why `tags` is empty, when it is


class QueueHealth(BaseModel):
    inside: int  # requests admitted: one encoding, the rest waiting
    capacity: int
    served: int
    refused: int


class EncoderHealth(BaseModel):
    state: str  # loaded | unloaded (see --unload-after; the text encoder loads for best and negative prompts)
    loads: int
    unloads: int
    last_load_s: float | None  # how long the last load took
    last_load_at: float | None  # when (Unix time)
    unload_after_s: float | None
    backend: str | None = None  # once loaded: onnxruntime or axengine
    provider: str | None = None


class NpuHealth(BaseModel):
    lock_file: str | None  # the file every NPU call flocks (--npu-lock)
    holds: int
    waits: int  # holds that found the NPU taken
    wait_ms_total: float
    wait_ms_max: float
    timeouts: int


class LabelCacheHealth(BaseModel):
    entries: int
    bytes: int
    file: str | None  # where it is saved (None: kept in memory only)


class TaggerHealth(BaseModel):
    name: str  # what /tagger/v1/interrogators lists
    folder: str
    file: str  # model.axmodel (on the NPU) or model.onnx (the published float model)
    tags: int
    model: EncoderHealth  # loaded on the first tag request, unloaded when idle


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")  # a newer server may say more; an older client reads what it knows

    status: str
    backend: str | None
    provider: str | None
    model: str
    models: dict[str, str]  # dir, image: the model set and the image encoder's file in it
    image_encoder: EncoderHealth
    text_encoder: EncoderHealth
    npu: NpuHealth
    vocabulary: dict[str, int]  # labels per category
    labels: int
    queue: QueueHealth
    label_cache: LabelCacheHealth | None = None  # /clip/v1/classify's encoded labels
    tagger: TaggerHealth | None = None  # the WD tagger served beside CLIP, if any
    uptime_s: float
    pid: int | None = None  # the serving process: a starter tells its own server from another on the port
