"""The diagnostic MLLM as a machine observer: procedural VQA (64×64 scenes, one-word answers)
answered by a LLaVA-layout model trained here (see its MODEL_CARD.md).

Every token method runs through the real LLaVA adapter, so in-tower (ToMe, FlowCut) and in-LLM methods
work too; in-LLM layers, given for LLaVA-1.5's 32-layer LLM, are mapped to this LLM's depth at the same
relative depth (each method's ``layers_for(depth)``). Text-guided methods (CDPruner) need CLIP's text tower
and ``visual_projection``, which this model does not have: they are refused unless the observer option
``embedding_space="llm-input"`` runs the named deviation (the LLM's input embeddings of the question against
the projected tokens; :mod:`tokencodec.adapters.relevance`). When a pixel codec ran first, the model sees
the decoded 64×64 image.
Distortions: ``accuracy`` (ground truth), ``agreement`` (same answer as the uncompressed model on
the original image), ``object_recall`` / ``relevant_recall`` (share of the patches holding any
object / the objects the answer depends on that some kept token stands for). Rates: visual tokens
at the LLM's last layer, visual tokens averaged over layers, analytic prefill FLOPs (``macs2``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tokencodec.metrics.machine import recall
from tokencodec.observers.base import Observer, Prepared, Runner, Sample, SplitInference, Task, content_digest
from tokencodec.observers.registry import register_observer
from tokencodec.tokens.signals import Signal

NO_TEXT_TOWER = ("the diagnostic MLLM has no CLIP text tower or visual_projection, the relevance space CDPruner's "
                 "official code uses; observer option embedding_space: llm-input runs a named deviation (the LLM's "
                 "input embeddings of the question against the projected tokens)")


@dataclass
class Answer:
    logits: torch.Tensor            # over the answer vocabulary
    covered: np.ndarray | None      # flat: patches some kept token stands for (None: every patch)


class VQATask(Task):
    measures = ("accuracy", "agreement", "object_recall", "relevant_recall")

    def __init__(self, answers: Sequence[str]):
        self.answers = list(answers)

    def samples(self, split: str = "test", n: int = 700, seed: int = 0, types: list[str] | None = None,
                limit: int | None = None) -> list[Sample]:
        from tokencodec.data.vqa import VQADataset

        data = VQADataset(split, min(n, limit) if limit else n, seed, types)
        return [Sample(f"{split}/{s.index}/{s.qtype}", content_digest(s.image, s.question), s.image, s) for s in data]

    @staticmethod
    def masks(payload) -> tuple[np.ndarray, np.ndarray]:
        """(object mask, relevant mask) of a sample, flat in token raster order."""
        return payload.object_mask.reshape(-1), payload.relevant_mask.reshape(-1)

    def score(self, sample, output: Answer, reference) -> dict[str, float]:
        s = sample.payload
        pred = int(output.logits.argmax())
        objects, relevant = self.masks(s)
        covered = output.covered if output.covered is not None else np.ones_like(objects)
        return {"accuracy": float(self.answers[pred] == s.answer),
                "agreement": float(pred == int(reference.argmax())),
                "object_recall": recall(covered, objects),
                "relevant_recall": recall(covered, relevant)}

    def group(self, sample_id: str) -> str:
        return sample_id.rsplit("/", 1)[-1]  # ids are split/index/question-type


class DiagnosticRunner(Runner):
    stages = ("vision-encoder", "pre-llm", "llm")

    def __init__(self, weights: str | None = None, attn_implementation: str = "sdpa", spatial: str = "per-frame",
                 positions: str | None = None, latency_device: str | None = None,
                 embedding_space: str | None = None):
        from tokencodec.metrics.cost import MLLMShape
        from tokencodec.metrics.rates import CostModel
        from tokencodec.models.diagnostic import WEIGHTS_DIR, DiagnosticMLLM

        self.mllm = DiagnosticMLLM.from_pretrained(weights, attn_implementation=attn_implementation)
        self.spatial = spatial      # video: spatial methods per frame or over all frames (LlavaTokenCompression)
        self.positions = positions  # None: each method's official layout; "original" | "renumber" for all
        self.embedding_space = embedding_space   # text-guided methods: None (refused) or "llm-input" (a deviation)
        self.cost = CostModel(MLLMShape.from_config(self.mllm.model.config), device=latency_device)
        self.depth = self.mllm.model.config.text_config.num_hidden_layers
        folder = WEIGHTS_DIR if weights is None else weights
        with open(f"{folder}/model.safetensors", "rb") as f:
            self.weights_id = hashlib.sha256(f.read()).hexdigest()[:12]

    def key(self) -> str:
        return (f"diagnostic-mllm-{self.weights_id}" + ("" if self.spatial == "per-frame" else f"-{self.spatial}")
                + ("" if self.positions is None else f"-positions-{self.positions}")
                + ("" if self.embedding_space is None else f"-text-{self.embedding_space}"))

    @torch.inference_mode()
    def prepare(self, sample: Sample) -> Prepared:
        logits = self.mllm.answer_logits([sample.image], [sample.payload.question])
        return Prepared(reference=logits[0])

    @staticmethod
    def frames_of(image: np.ndarray) -> int:
        """1 for an image (H×W×3), T for a video (T×H×W×3)."""
        return image.shape[0] if image.ndim == 4 else 1

    def _adapter_options(self, method, question: str = "") -> dict[str, Any]:
        layout = {} if self.positions is None else {"positions": self.positions}
        if Signal.TEXT_EMBEDDING in method.needs:          # a text-guided method: the question's embeddings
            return {**layout, **self._text_options(method, question)}
        if method.stage != "llm":
            return layout
        # the published layers, at the same relative depth
        return {"layers": list(method.layers_for(self.depth)), **layout}

    def supports(self, method_cls) -> str | None:
        return super().supports(method_cls) or DiagnosticObserver.options_fit(
            method_cls, {"embedding_space": self.embedding_space})

    def _text_options(self, method, question: str) -> dict[str, Any]:
        if self.embedding_space != "llm-input":
            raise ValueError(f"method {method.name!r}: {NO_TEXT_TOWER}")
        ids = self.mllm.tokenizer.encode(question, add_special_tokens=False).ids   # the raw question, no prompt
        return {"embedding_space": "llm-input", "question_ids": torch.tensor([ids], device=self.mllm.device)}

    @torch.inference_mode()
    def run(self, sample, image, method, budget, prepared, pixels_changed):
        import tokencodec

        s = sample.payload
        kw = self.mllm.inputs([image], [s.question])
        last = int(kw.pop("last")[0])
        image_slots = int((kw["input_ids"][0] == self.mllm.model.config.image_token_id).sum())
        text_tokens = int(kw["attention_mask"][0].sum()) - image_slots
        frames, record = self.frames_of(image), None
        if method is None:
            logits = self.mllm.model(**kw).logits
            answer, covered = logits[0, last, self.mllm.answer_ids].float(), None
        else:
            video = {"frames": frames, "spatial": self.spatial} if frames > 1 else {}
            options = {**video, **self._adapter_options(method, s.question)}
            with tokencodec.compress(self.mllm.model, method, budget, **options) as patch:
                logits = self.mllm.model(**kw).logits
            record = patch.record()
            slot = int((record.sequence_index[0] == last).nonzero()[0, 0])  # logits are shorter after pruning
            answer = logits[0, slot, self.mllm.answer_ids].float()
            covered = record.kept.source[0].any(0).numpy()
        return Answer(answer, covered), self.cost.of_record(record, image_slots, text_tokens, images=frames)


class DiagnosticSplit(SplitInference):
    """The sender runs the tower on the 64×64 image and takes layer −2's patch tokens; the receiver answers a
    question from decoded tokens through the LLaVA adapter (the tower runs on a blank image whose tokens are
    replaced by the decoded ones)."""

    receiver = "answer"
    input_size = 64                   # models.diagnostic.IMAGE_SIZE (not imported here: the CLI reads it first)
    defaults = {"method": "rdo", "keep": 16, "profile": "step-4"}

    def __init__(self):
        from tokencodec.models.diagnostic import DiagnosticMLLM

        self.mllm = DiagnosticMLLM.from_pretrained()

    def tokens(self) -> int:
        from tokencodec.models.diagnostic import N_IMAGE_TOKENS

        return N_IMAGE_TOKENS

    @torch.inference_mode()
    def send(self, image: np.ndarray, method, budget):
        import tokencodec
        from tokencodec.models.diagnostic import preprocess

        size = self.input_size
        if image.shape != (size, size, 3):
            raise ValueError(f"image of shape {image.shape}; the diagnostic MLLM takes {size}×{size}×3")
        tower = self.mllm.model.model.vision_tower          # layer −2, with the signals the method reads
        return tokencodec.compress(tower, method, budget, layer=-2).compress(preprocess(image))

    @torch.inference_mode()
    def answer(self, tokens, question: str) -> str:
        """The answer from decoded tokens (None: nothing arrived, the answer to the no-image grey picture)."""
        import tokencodec
        from tokencodec.tokens.replay import Replay

        mllm = self.mllm
        unknown = [w for w in question.replace("?", " ?").split() if mllm.tokenizer.token_to_id(w) is None]
        if unknown:
            raise ValueError(f"question words {unknown} are not in the diagnostic model's vocabulary "
                             "(its questions: tokencodec.data.vqa)")
        if not question.rstrip().endswith("?"):
            question = question.rstrip() + " ?"
        if tokens is None:      # nothing arrived over a lossy channel: the answer to "no image" (uniform grey)
            from tokencodec.channels.pixels import no_image

            logits = mllm.answer_logits([no_image((self.input_size, self.input_size, 3))], [question])
            return mllm.answers[int(logits[0].argmax())]
        blank = np.zeros((self.input_size, self.input_size, 3), dtype=np.uint8)   # the tower's output is replaced
        kw = mllm.inputs([blank], [question])
        last = int(kw.pop("last")[0])
        replay = Replay(tokens.features, tokens.positions)
        with tokencodec.compress(mllm.model, replay, replay.budget) as patch:
            logits = mllm.model(**kw).logits
        slot = int((patch.record().sequence_index[0] == last).nonzero()[0, 0])
        return mllm.answers[int(logits[0, slot, mllm.answer_ids].argmax())]


@register_observer("diagnostic-mllm")
class DiagnosticObserver(Observer):
    """The diagnostic MLLM on its VQA test questions (see the module docstring)."""

    split = DiagnosticSplit
    task_class = VQATask
    runner_stages = ("vision-encoder", "pre-llm", "llm")
    runner_rates = ("tokens_in", "tokens", "tokens_avg_layers", "flops", "kv_bytes", "latency_pred_s")

    @classmethod
    def method_fits(cls, method_cls) -> str | None:
        """Any method the LLaVA adapter supplies signals for (in the tower, at the projector, in the LLM)."""
        if method_cls.stage not in cls.runner_stages:
            return super().method_fits(method_cls)
        from tokencodec.adapters.llava import LlavaTokenCompression
        from tokencodec.tokens.signals import resolve_request

        try:
            resolve_request(method_cls, LlavaTokenCompression.supplies[method_cls.stage], True, "the LLaVA adapter")
        except ValueError as err:
            return str(err)
        return None

    @classmethod
    def options_fit(cls, method_cls, options) -> str | None:
        if Signal.TEXT_EMBEDDING in method_cls.needs and options.get("embedding_space") != "llm-input":
            return NO_TEXT_TOWER
        return None

    def __init__(self, weights: str | None = None, attn_implementation: str = "sdpa",
                 latency_device: str | None = None, embedding_space: str | None = None):
        """``latency_device``: a roofline device profile (h200, h100-sxm, a100-80gb, l40s, cpu): every point
        then also reports ``latency_pred_s``. ``embedding_space``: None (text-guided methods are refused: no
        CLIP text tower) or ``"llm-input"`` (CDPruner's relevance from the LLM's input embeddings of the
        question against the projected tokens: a deviation from the official method, named in results)."""
        if embedding_space not in (None, "llm-input"):
            raise ValueError(f"embedding_space={embedding_space!r}; allowed: None or 'llm-input'")
        runner = DiagnosticRunner(weights, attn_implementation, latency_device=latency_device,
                                  embedding_space=embedding_space)
        super().__init__(VQATask(runner.mllm.answers), runner)
