"""A real Hugging Face MLLM as a machine observer: any LLaVA or Qwen2-VL checkpoint on any VQA data set.

    observer: {name: hf-mllm, model: llava-hf/llava-1.5-7b-hf, device: cuda}
    data: {dataset: lmms-lab/POPE, split: test, limit: 500}

The model loads by hub name or folder (:class:`~tokencodec.models.hf.HFMLLM`, safetensors only), the
data by hub name or folder (:mod:`tokencodec.data.hf_datasets`). Every method runs through the
model's adapter (pre-LLM and in-LLM methods), answers are greedy.
Distortions: ``accuracy`` (the answer, lower-cased and stripped of a final full stop, equals the
ground truth) and ``agreement`` (equals the uncompressed model's answer on the original image).
Rates: those of the one cost path (``HFMLLM.cost_model``: visual tokens entering the LLM and at its last
layer, their average over layers, FLOPs of the vision tower, projector and LLM prefill in ``macs2``, KV
bytes) and ``latency_s`` (the whole generate, CUDA-synchronised on a GPU).
Batch 1: the sweep engine hands a runner one sample per job (every pipeline and budget of it), so there
is no batch of samples to run here; batched costs come from the lmms-eval plugin's ``--batch_size`` or
:meth:`~tokencodec.models.hf.HFMLLM.generate_batch` (docs/real-models.md).
"""

from __future__ import annotations

import hashlib

from tokencodec.observers.base import Observer, Prepared, Runner, Sample, Task, content_digest
from tokencodec.observers.registry import register_observer


def normalise(answer: str) -> str:
    return answer.strip().lower().rstrip(".").strip()


class HFVQATask(Task):
    measures = ("accuracy", "agreement")

    def samples(self, dataset: str, split: str = "test", limit: int | None = 200, seed: int = 0,
                subset: str | None = None, image_column: str = "image", question_column: str = "question",
                answer_column: str = "answer", prompt_suffix: str = "") -> list[Sample]:
        from tokencodec.data.hf_datasets import load_hf_split, vqa_rows

        columns = {"image": image_column, "question": question_column, "answer": answer_column}
        rows = vqa_rows(load_hf_split(dataset, split, subset), columns, limit, seed)
        return [Sample(f"{split}/{r['id']}", content_digest(r["image"], r["question"] + prompt_suffix), r["image"],
                       {"question": r["question"] + prompt_suffix, "answer": r["answer"]}) for r in rows]

    def score(self, sample, output: str, reference: str) -> dict[str, float]:
        return {"accuracy": float(normalise(output) == normalise(sample.payload["answer"])),
                "agreement": float(normalise(output) == normalise(reference))}


class HFMLLMRunner(Runner):
    stages = ("pre-llm", "llm")       # ToMe (a per-layer r, not a keep ratio) runs through the lmms-eval plugin

    def __init__(self, model: str, device: str = "", dtype: str = "auto", max_new_tokens: int = 8,
                 latency_device: str | None = None):
        import torch

        from tokencodec.models.hf import HFMLLM

        self.mllm = HFMLLM.load(model, device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
                                dtype=dtype)
        self.max_new_tokens = max_new_tokens
        self.mllm.latency_device = latency_device
        self.cost = self.mllm.cost_model
        config = self.mllm.model.config.to_json_string(use_diff=False)
        self.model_id = hashlib.sha256(config.encode()).hexdigest()[:12]

    @property
    def rates(self) -> tuple[str, ...]:
        return (*self.cost.rates, "latency_s")

    def key(self) -> str:
        return (f"hf-mllm-{self.mllm.source.replace('/', '_')}-{self.model_id}-{self.mllm.info['dtype']}"
                f"-new{self.max_new_tokens}")          # the answers depend on how many tokens may follow

    def _generate(self, image, question, method=None, budget=None):
        return self.mllm.generate([image], question, method, budget, max_new_tokens=self.max_new_tokens)

    def prepare(self, sample: Sample) -> Prepared:
        return Prepared(reference=self._generate(sample.image, sample.payload["question"]).text)

    def run(self, sample, image, method, budget, prepared, pixels_changed):
        g = self._generate(image, sample.payload["question"], method, budget)
        return g.text, {k: g.rates[k] for k in self.rates}


@register_observer("hf-mllm")
class HFMLLMObserver(Observer):
    """A real LLaVA or Qwen2-VL checkpoint on an HF VQA data set (see the module docstring)."""

    task_class = HFVQATask
    runner_stages = ("pre-llm", "llm")
    runner_rates = ("tokens_in", "tokens", "tokens_avg_layers", "flops", "kv_bytes", "latency_pred_s", "latency_s")

    def __init__(self, model: str, device: str = "", dtype: str = "auto", max_new_tokens: int = 8,
                 latency_device: str | None = None):
        """``latency_device``: a roofline device profile: every point then also reports ``latency_pred_s``."""
        super().__init__(HFVQATask(), HFMLLMRunner(model, device, dtype, max_new_tokens, latency_device))

    @staticmethod
    def check_machine(model: str, **_) -> None:
        """The checkpoint can be loaded here: a folder with a config, or a hub name in the cache or reachable."""
        from tokencodec.models.hf import check_available

        check_available(model)
