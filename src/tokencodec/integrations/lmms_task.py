"""A tiny local lmms-eval task (procedural VQA scenes in an HF ``datasets`` folder) for offline runs and tests.

    python -m tokencodec.integrations.lmms_task /tmp/tc-task --n 8
    lmms-eval --model tokencodec --model_args pretrained=/tmp/tiny-llava,method=visionzip,keep=4 \\
        --tasks tokencodec_vqa --include_path /tmp/tc-task

The task follows lmms-eval's task format (a YAML file and a ``utils.py`` beside it); its data is a
``DatasetDict`` saved with ``save_to_disk`` and read back with ``load_from_disk`` (no hub). Metric:
``exact_match`` of the lower-cased answer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TASK = "tokencodec_vqa"

UTILS = '''"""lmms-eval hooks of the tokencodec_vqa task (written by tokencodec.integrations.lmms_task)."""


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    post = (lmms_eval_specific_kwargs or {}).get("post_prompt", "")
    return doc["question"] + post


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"].lower())}
'''

YAML = """task: {task}
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    post_prompt: "\\nAnswer the question using a single word or phrase."
metadata:
  version: 0.0
"""


def write_task(folder: str | Path, n: int = 8, seed: int = 0) -> Path:
    """Write the task (YAML, utils.py, data/) into ``folder``; returns the YAML's path."""
    import datasets
    from PIL import Image

    from tokencodec.data.vqa import VQADataset

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    samples = VQADataset("test", n, seed)
    rows = {"question_id": [f"{seed}-{i}" for i in range(n)],
            "image": [Image.fromarray(s.image) for s in samples],
            "question": [s.question for s in samples], "answer": [s.answer for s in samples]}
    features = datasets.Features({"question_id": datasets.Value("string"), "image": datasets.Image(),
                                  "question": datasets.Value("string"), "answer": datasets.Value("string")})
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(
        str(folder / "data"))
    (folder / "utils.py").write_text(UTILS, encoding="utf-8")
    path = folder / f"{TASK}.yaml"
    path.write_text(YAML.format(task=TASK, data=folder / "data"), encoding="utf-8")
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_task(a.folder, a.n, a.seed))
