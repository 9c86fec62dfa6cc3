"""Observers judge what a pipeline delivers. An observer is a **task** (its samples, their ground
truth, how an output is scored) and a **runner** (the model, or the eye, that turns pixels into an
output, with an optional token method acting inside it). Keeping the two apart is what lets any
observer judge any pipeline: a pixel codec hands the runner decoded pixels, a token method acts
inside the runner, and the task scores the output the same way in both cases.

The expensive part that does not depend on the pipeline (the uncompressed reference output, and
the encoder's tokens of the original pixels) is ``prepare``-d once per sample and cached.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Sample:
    id: str                 # unique within a data set (a relative path, "test/3/colour", …)
    digest: str             # content hash: records and cached encodings never outlive the content
    image: np.ndarray       # H×W×3 uint8: what a pixel codec codes
    payload: Any = None     # the task's own data (question, answer, masks…)


def content_digest(array: np.ndarray, *extra: Any) -> str:
    h = hashlib.sha256(np.ascontiguousarray(array).tobytes())
    h.update(repr((array.shape, str(array.dtype), *extra)).encode())
    return h.hexdigest()[:16]


@dataclass
class Prepared:
    """What a runner computes once per sample on the original pixels."""

    reference: Any              # the uncompressed output (what ``agreement`` compares with)
    tokens: Any = None          # the encoder's tokens, reused by pre-LLM methods when pixels are unchanged


class Task(ABC):
    """Samples, their ground truth, and the scoring of an output."""

    measures: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def samples(self, **data: Any) -> list[Sample]: ...

    @abstractmethod
    def score(self, sample: Sample, output: Any, reference: Any) -> dict[str, float]:
        """Distortions of one output; a measure that cannot be computed on this sample is left out."""

    def unavailable(self, sample: Sample) -> dict[str, str]:
        """Measures this sample cannot have, with the reason (e.g. an image too small for MS-SSIM)."""
        return {}

    def group(self, sample_id: str) -> str | None:
        """The subgroup a sample is reported in (e.g. a question type); None: no per-group tables."""
        return None


def video_support(shows_video: bool, method_cls) -> str | None:
    """Why a video method cannot run on an image observer (None when the kinds agree)."""
    if getattr(method_cls, "video", False) and not shows_video:
        return (f"{method_cls.name!r} codes video and this observer shows single images (video observers: "
                "diagnostic-video, fashion-vit-video)")
    return None


class Runner(ABC):
    """Turns pixels into an output, optionally with a token method acting inside the model."""

    cost = None                                    # a metrics.rates.CostModel: how ``run`` turns records into rates

    @property
    def rates(self) -> tuple[str, ...]:
        """Rates ``run`` reports (tokens, flops…): the cost model's, unless a runner names its own."""
        return () if self.cost is None else self.cost.rates
    stages: ClassVar[tuple[str, ...]] = ()         # method stages this runner can run
    video: bool = False                            # samples are clips (T×H×W×3); video methods can run

    def key(self) -> str:
        """Identifies the model and its configuration (for caches and record keys)."""
        return type(self).__name__

    @abstractmethod
    def prepare(self, sample: Sample) -> Prepared: ...

    @abstractmethod
    def run(self, sample: Sample, image: np.ndarray, method, budget, prepared: Prepared,
            pixels_changed: bool) -> tuple[Any, dict[str, float]]:
        """(output, rates) for ``image`` (decoded pixels when a codec ran before) with ``method`` at
        ``budget`` (both None: no token compression)."""

    def supports(self, method_cls) -> str | None:
        """None when the method can run here, else why not."""
        if method_cls.stage in self.stages:
            return None
        return (f"it acts at stage {method_cls.stage!r}; this observer runs "
                + (", ".join(repr(s) for s in self.stages) or "no token methods"))


class SplitInference(ABC):
    """Split inference for one observer: the vision side that runs on the sender, and what its receiver does
    with tokens decoded from a bitstream (``receiver``: "answer" a question or "classify").

    ``input_size``: the square an input image is resized to (None: the sender crops as the model does);
    ``defaults``: the sender's method, keep count and shipped profile when the user names none.
    """

    receiver: ClassVar[str] = ""
    input_size: ClassVar[int | None] = None
    defaults: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def tokens(self) -> int:
        """Tokens the sender's method chooses from."""

    @abstractmethod
    def send(self, image: np.ndarray, method, budget):
        """The kept TokenBatch of ``image`` (the observer's tokens, ``method`` at ``budget``)."""

    def answer(self, tokens, question: str) -> str:
        raise NotImplementedError(f"{type(self).__name__} classifies; it does not answer questions")

    def classify(self, tokens, top: int) -> list[tuple[str, float]]:
        raise NotImplementedError(f"{type(self).__name__} answers questions; it does not classify")


class Observer:
    """A task judged through a runner; registered by name in ``OBSERVERS``."""

    name: ClassVar[str] = ""
    task_class: ClassVar[type[Task] | None] = None     # for checks made before any model is loaded
    runner_stages: ClassVar[tuple[str, ...]] = ()
    runner_rates: ClassVar[tuple[str, ...]] = ()
    video: ClassVar[bool] = False                      # its samples are clips (the runner's ``video`` too)
    split: ClassVar[type[SplitInference] | None] = None   # split inference with token bitstreams, if it has one

    @classmethod
    def method_support(cls, method_cls, options: dict[str, Any] | None = None) -> str | None:
        """None when the method can run on this observer (built with ``options``), else why not (checked
        without a model)."""
        return (video_support(cls.video, method_cls) or cls.method_fits(method_cls)
                or cls.options_fit(method_cls, options or {}))

    @classmethod
    def options_fit(cls, method_cls, options: dict[str, Any]) -> str | None:
        """The observer's conditions that depend on its options (the diagnostic MLLM's text side); None: none."""
        return None

    @classmethod
    def method_fits(cls, method_cls) -> str | None:
        """The observer's own conditions (stage, signals); video against images is checked apart."""
        if method_cls.stage not in cls.runner_stages:
            return (f"it acts at stage {method_cls.stage!r}; observer {cls.name!r} runs "
                    + (", ".join(repr(s) for s in cls.runner_stages) or "no token methods"))
        if method_cls.stage == "pre-llm":   # pre-LLM signals come from the vision tower (CDPruner's text: none yet)
            from tokencodec.adapters.vision_tower import TOWER_SIGNALS
            from tokencodec.tokens.signals import resolve_request

            try:
                resolve_request(method_cls, TOWER_SIGNALS, True, "the vision tower")
            except ValueError as err:
                return str(err)
        return None

    def __init__(self, task: Task, runner: Runner):
        self.task, self.runner = task, runner

    @property
    def measures(self) -> tuple[str, ...]:
        return self.task.measures

    @property
    def rates(self) -> tuple[str, ...]:
        return self.runner.rates

    def key(self) -> str:
        return f"{self.name}-{self.runner.key()}"

    def samples(self, **data: Any) -> list[Sample]:
        return self.task.samples(**data)

    def prepare(self, sample: Sample) -> Prepared:
        return self.runner.prepare(sample)

    def observe(self, sample: Sample, image: np.ndarray, method, budget, prepared: Prepared,
                pixels_changed: bool) -> dict[str, float]:
        output, rates = self.runner.run(sample, image, method, budget, prepared, pixels_changed)
        return {**rates, **self.task.score(sample, output, prepared.reference)}

    def group(self, sample_id: str) -> str | None:
        return self.task.group(sample_id)
