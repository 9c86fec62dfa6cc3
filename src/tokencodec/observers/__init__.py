"""Observers: a task (samples, ground truth, scoring) judged through a runner (a model or the eye).

Any observer judges any pipeline: pixel codecs hand decoded pixels to the runner, token methods act
inside it. Importing this package registers every observer in ``OBSERVERS``.
"""

from tokencodec.observers import (  # noqa: F401  (fill the registry)
    diagnostic,
    diagnostic_video,
    efficientnet,
    fashion_vit,
    fashion_vit_video,
    hf_mllm,
    human,
    human_video,
)
from tokencodec.observers.base import Observer, Prepared, Runner, Sample, Task, content_digest
from tokencodec.observers.registry import OBSERVERS, ObserverOptionError, ObserverSpec, observer_for, register_observer

__all__ = ["OBSERVERS", "Observer", "ObserverOptionError", "ObserverSpec", "Prepared", "Runner", "Sample", "Task",
           "content_digest", "observer_for", "register_observer"]
