"""A device's part in captioning across a fleet: a Dask worker plugin that opens the interrogator (or, to tag,
the set's WD tagger) once per worker, and the task that captions a batch of images sent as bytes (no shared
filesystem: the controller reads the files). The worker has the resource NPU=1 and BATCHES_PER_DEVICE
threads, and every task asks for its share of the NPU: two batches run at once, so one's decodes and ranking
overlap the other's encodes (the NPU lock still lets one encode run at a time). Runs in the device's runtime
virtualenv: no torch.
"""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker

from common.errors import UserError
from runtime.caption_style import CaptionStyle
from runtime.captioning import Answer, CaptionTask, ImageTask, answer_all
from runtime.classify import BATCH_LIMITS, Classifier, Question
from runtime.interrogator import CaptionOptions, Interrogator
from runtime.npu import NpuLock
from runtime.opening import OpenOptions, open_interrogator
from runtime.preprocess import Fidelity
from runtime.prompt_modes import PromptBuilder, PromptMode
from runtime.tag_captions import TagTask
from runtime.tagger import Tagger, required_tagger

PLUGIN_NAME = "clip-axera-interrogator"
NPU = "NPU"  # the worker resource: one per device
BATCHES_PER_DEVICE = 2  # each task asks for 1/2 of the NPU: a batch's start and end leave it no gap


@dataclass(frozen=True)
class DeviceSettings:
    """Where a device's fetched set is and how to open it (its `device:` section's settings)."""

    models: str
    fidelity: str
    npu_lock: str | None


class InterrogatorPlugin(WorkerPlugin):
    """Sent by the controller (pickled with every device's settings), set up on every worker: the interrogator
    of its device's fetched set, opened once. A set that cannot be opened is kept as `error` for the
    controller to read (`plugin_error`) and name the device, instead of an exception without one."""

    name = PLUGIN_NAME

    def __init__(
        self,
        devices: dict[str, DeviceSettings],
        options: CaptionOptions,
        mode: str | None,
        question: Question | None = None,
        tag_style: CaptionStyle | None = None,
    ) -> None:
        """`tag_style`: tag with the tagger of the device's set (`tagger:`) in this style, instead of CLIP."""
        self.devices, self.options, self.mode, self.question = devices, options, mode, question
        self.tag_style = tag_style
        self.interrogator: Interrogator | None = None
        self.task: ImageTask | None = None
        self.device = ""
        self.error: str | None = None

    def setup(self, worker: Any) -> None:
        self.device = str(worker.name)
        self.workers = os.cpu_count() or 2
        # The device's cores decode ahead, for both batches running (the pipeline itself is per batch)
        self.decoders = ThreadPoolExecutor(self.workers, "caption-decode")
        settings = self.devices[self.device]
        options = OpenOptions(
            npu=NpuLock(Path(settings.npu_lock) if settings.npu_lock else None), fidelity=Fidelity(settings.fidelity)
        )
        try:
            if self.tag_style is not None:
                tagger = Tagger(required_tagger(Path(settings.models)), options.npu, unload_after=None)
                self.task = TagTask.of(tagger, self.tag_style)
                return
            self.interrogator = open_interrogator(Path(settings.models), options)
            prompts = classify = None
            if self.mode:
                prompts = (PromptBuilder(self.interrogator), PromptMode(self.mode))
                prompts[0].require(prompts[1])
            if self.question:  # the label cache beside the device's set: a second run encodes nothing
                classify = (Classifier.open(self.interrogator, BATCH_LIMITS), self.question)
                classify[0].check(self.question)
        except UserError as exc:
            self.error = str(exc)
            return
        self.task = CaptionTask(self.interrogator, self.options, prompts, classify)

    def caption_all(self, images: list[bytes]) -> list[dict[str, Any]]:
        """Each image's {'text', 'record', 'device'}, or {'error', 'device'} when it cannot be captioned: the
        device's pipeline (decodes ahead of the encoder, ranking behind it; see answer_all) over the batch."""
        if self.task is None:
            raise RuntimeError(f"{self.device} could not open its models: {self.error}")
        results: list[dict[str, Any]] = []

        def deliver(_: int, answer: Answer | Exception) -> None:
            if isinstance(answer, Exception):
                results.append({"error": str(answer) or type(answer).__name__, "device": self.device})
            else:
                results.append({"text": answer[0], "record": answer[1], "device": self.device})

        answer_all(self.task, enumerate(images), deliver, self.decoders, self.workers)
        return results

    def teardown(self, worker: Any) -> None:
        self.decoders.shutdown(cancel_futures=True)


def plugin_error(dask_worker: Any) -> str | None:
    """Run on each worker by the controller (`Client.run` hands it the worker): why its interrogator could
    not be opened, if it could not."""
    return dask_worker.plugins[PLUGIN_NAME].error


def caption_batch(images: list[bytes]) -> bytes:
    """The task: a batch of images' captions on this worker's NPU, pickled into one bytes object
    (`batch_answers` reads it back). Dask measures a task's result for its memory accounting: a list of
    nested records it walks item by item, holding the GIL the encoder's thread waits for; a bytes object
    it measures in one step (A/B on bench/fleet.py's device: 116-121 -> 127-131 encodes/s)."""
    return pickle.dumps(get_worker().plugins[PLUGIN_NAME].caption_all(images), protocol=pickle.HIGHEST_PROTOCOL)


def batch_answers(result: bytes) -> list[dict[str, Any]]:
    """caption_batch's result, on the controller (from its own workers, over the run's TLS)."""
    return pickle.loads(result)
