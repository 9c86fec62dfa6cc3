"""lmms-eval plugin: any tokencodec method on a real LLaVA or Qwen2-VL, under the benchmark suite researchers use.

Registered through lmms-eval's entry-point group ``lmms_eval.models`` (pyproject), so after
``pip install "tokencodec[lmms]"`` (see docs/real-models.md for the install):

    lmms-eval --model tokencodec \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=visionzip,keep=64 --tasks pope

Model arguments: ``pretrained`` (hub name or folder; safetensors only), ``method`` (a registered
method, or ``none``), ``keep`` (tokens) or ``ratio`` (of the visual tokens) or ``r`` (ToMe's merges
per layer), ``device`` (default cuda when available), ``dtype``, ``seed``, ``max_new_tokens``
(default: the task's), ``costs`` (folder for the cost records, default ``tokencodec-costs``) and
any method option as ``opt_<name>=<value>`` (e.g. ``opt_layer=2`` for FastV's K). lmms-eval's own
``--batch_size N`` runs N samples per ``generate`` (left-padded prompts, each sample's own image span;
requests grouped by their generation options, longest prompts first, answers in the request order);
``auto`` means 1.

Per sample the plugin records, in ``<costs>/<run id>.jsonl`` (one JSON line per sample, flushed as
it goes; each run appends a session that starts with a header line: configuration, method,
provenance, and the cost model: FLOPs convention and parts, rate definitions): the rates of
:class:`~tokencodec.metrics.rates.CostModel` (visual tokens entering the LLM and at its last layer, their
average over layers, FLOPs, KV bytes) of that sample's own tokens, tokens per LLM layer, latency (the
batch's wall time ÷ its size, and the batch's, ``batch_latency_s``, with ``batch_size``) and the batch's
peak memory. Answers are greedy (the task's temperature and sampling options are not used).
:func:`curve_from_runs` (``tokencodec lmms-curve``) joins these with lmms-eval's results files into a
tokencodec curve (one point per run: the task metric against the mean rates; the latest session with the
results' sample count), which ``tokencodec bd`` and ``tokencodec plot`` read like any other.
One process only (no accelerate).
"""

from __future__ import annotations

import json
import os
import time
from importlib.metadata import version
from pathlib import Path

from lmms_eval.api.model import lmms

from tokencodec.integrations.lmms_results import run_config, run_id


def parse_batch_size(value) -> int:
    """lmms-eval's ``--batch_size``: a positive int; ``auto`` means 1 (no out-of-memory probing here)."""
    text = str(value).strip()
    if text == "auto":
        return 1
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"batch_size={value!r}: allowed a positive integer, or auto (= 1)")
    return int(text)


def parse_budget(keep=None, ratio=None, r=None):
    from tokencodec.tokens.compress import Budget

    given = {k: v for k, v in (("keep", keep), ("ratio", ratio), ("r", r)) if v not in (None, "")}
    if len(given) > 1:
        raise ValueError(f"give one of keep, ratio, r; got {', '.join(given)}")
    if not given:
        return None
    (name, value), = given.items()
    return Budget(**{name: float(value) if name == "ratio" else int(value)})


class TokencodecLMM(lmms):
    """An lmms-eval model: an HF MLLM (tokencodec.models.hf.HFMLLM) with a token method hooked in."""

    is_simple = True

    def __init__(self, pretrained: str, method: str = "none", keep=None, ratio=None, r=None, device: str = "",
                 dtype: str = "auto", seed: int = 0, max_new_tokens=None, costs: str = "tokencodec-costs",
                 batch_size=1, max_batch_size=None, **kwargs) -> None:
        super().__init__()
        import torch

        from tokencodec.models.hf import HFMLLM
        from tokencodec.provenance import provenance
        from tokencodec.tokens.compress import get_method

        options = {k[4:]: v for k, v in kwargs.items() if k.startswith("opt_")}
        unknown = sorted(k for k in kwargs if not k.startswith("opt_"))
        if unknown:
            raise ValueError(f"tokencodec model: unknown model_args {unknown}; allowed: pretrained, method, keep, "
                             "ratio, r, device, dtype, seed, max_new_tokens, costs, opt_<method option>")
        self.batch_size = parse_batch_size(batch_size)      # lmms-eval's --batch_size (max_batch_size: unused)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("the tokencodec model runs in one process (every process would run every sample "
                             "and write the same cost file); launch lmms-eval without accelerate")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(int(seed))
        self.mllm = HFMLLM.load(str(pretrained), device=device, dtype=str(dtype))
        self.method = None if method in (None, "", "none") else get_method(str(method), seed=int(seed), **options)
        self.budget = parse_budget(keep, ratio, r)
        if self.method is not None and self.budget is None:
            raise ValueError(f"method={method!r} needs a budget: keep=, ratio= or r=")
        self.max_new_tokens = None if max_new_tokens in (None, "") else int(max_new_tokens)
        self.config = run_config(pretrained, method, keep, ratio, r, seed, dtype, max_new_tokens, options)
        self.run = run_id(self.config)
        self.costs_path = Path(costs) / f"{self.run}.jsonl"
        self.costs_path.parent.mkdir(parents=True, exist_ok=True)
        method_info = self.method.describe() if self.method is not None else {"name": "none"}
        # the batch size is not in the run id (the answers and counts do not depend on it; latency_s does):
        # each session's header says it
        head = {"run": self.run, "session": f"{time.time_ns()}-{os.getpid()}", "config": self.config,
                "batch_size": self.batch_size,
                "method": method_info, "model": self.mllm.info,
                "device": device, "cost": self.mllm.cost_model.provenance(),
                "provenance": provenance(config=self.config, seed=int(seed),
                                         libraries={"lmms-eval": version("lmms_eval")})}
        self._costs = self.costs_path.open("a", encoding="utf-8")      # a rerun adds a session; lmms-curve picks one
        self._write(head)

    def _write(self, record: dict) -> None:
        self._costs.write(json.dumps(record, default=str) + "\n")
        self._costs.flush()
        os.fsync(self._costs.fileno())

    def generate_until(self, requests) -> list[str]:
        from lmms_eval.utils import Collator

        # lmms-eval's batching (as its own HF models do): requests grouped by their gen_kwargs, longest
        # prompts first (less padding), batches of batch_size; the answers go back in the request order
        order = Collator([req.args for req in requests], lambda args: -len(args[0]), grouping=True)
        answers = []
        for chunk in order.get_batched(n=self.batch_size):
            items = [([v for v in doc_to_visual(self.task_dict[task][split][doc_id]) if v is not None], context)
                     for context, _, doc_to_visual, doc_id, task, split in chunk]
            gen_kwargs = chunk[0][1]                       # one per batch (the grouping)
            # greedy always (temperature and sampling options are not used); the task's token limit, else 16
            limit = self.max_new_tokens or int(gen_kwargs.get("max_new_tokens", 16))
            generations = self.mllm.generate_batch(items, self.method, self.budget, max_new_tokens=limit)
            for (context, _, _, doc_id, task, split), g in zip(chunk, generations, strict=True):
                text = g.text
                for stop in gen_kwargs.get("until", []) or []:
                    if isinstance(stop, str) and stop and stop in text:
                        text = text.split(stop)[0]
                self._write({"task": task, "split": split, "doc_id": doc_id, **g.rates,
                             "tokens_per_layer": g.tokens_per_layer})
                answers.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return order.get_original(answers)

    def loglikelihood(self, requests):
        raise NotImplementedError("the tokencodec model answers generate_until tasks (POPE, GQA, MME, TextVQA, …)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("multi-round generation is not supported by the tokencodec model")


def manifest():
    """The entry point lmms-eval loads (group ``lmms_eval.models``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="tokencodec", simple_class_path="tokencodec.integrations.lmms_eval.TokencodecLMM")


__all__ = ["TokencodecLMM", "manifest", "parse_batch_size", "parse_budget"]
