"""Visual question answering data from Hugging Face ``datasets``: a hub name, or a local folder.

A folder written by ``save_to_disk`` is read with ``load_from_disk``; any other folder, or a hub name,
with ``load_dataset`` (offline, a hub name is read from the datasets cache). Rows need an image, a
question and an answer column (names configurable: GQA, POPE, TextVQA and VQAv2 exports differ).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokencodec.data.images import DatasetError


def load_hf_split(dataset: str, split: str = "test", name: str | None = None):
    """One split of a data set (a ``datasets.Dataset``); DatasetError naming what and where when absent."""
    try:
        import datasets
    except ImportError:
        raise DatasetError("HF data sets need the datasets package: pip install 'tokencodec[lmms]'") from None
    path = Path(dataset).expanduser()
    local = dataset.startswith(("/", ".", "~")) or path.exists()
    if local and not path.exists():
        raise DatasetError(f"data set folder {path} does not exist")
    try:
        if local and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            data = datasets.load_from_disk(str(path))
        else:
            data = datasets.load_dataset(str(path) if local else dataset, name)
    except (OSError, ValueError, ConnectionError) as err:
        where = path if local else f"the hub or the datasets cache ({datasets.config.HF_DATASETS_CACHE})"
        raise DatasetError(f"data set {dataset!r}: could not be read from {where} ({type(err).__name__}: "
                           f"{str(err)[:200]})") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DatasetError(f"data set {dataset!r} has no split {split!r}; it has {', '.join(data)}")
        data = data[split]
    return data


def vqa_rows(data, columns: dict[str, str], limit: int | None = None, seed: int = 0) -> list[dict]:
    """``limit`` rows (a seeded choice) as {id, image (H×W×3 uint8), question, answer}."""
    missing = [c for c in columns.values() if c not in data.column_names]
    if missing:
        raise DatasetError(f"columns {missing} not in the data set; it has {data.column_names} (set "
                           "image_column / question_column / answer_column)")
    index = np.arange(len(data))
    if limit is not None and limit < len(data):
        index = np.sort(np.random.default_rng(seed).permutation(len(data))[:limit])
    rows = []
    for i in index.tolist():
        row = data[i]
        image = row[columns["image"]]
        image = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
        answer = row[columns["answer"]]
        if isinstance(answer, list):                # VQAv2-style: several annotators' answers, take the first
            answer = answer[0] if answer else ""
        if isinstance(answer, dict):
            answer = answer.get("answer", "")
        rows.append({"id": str(i), "image": image, "question": str(row[columns["question"]]), "answer": str(answer)})
    return rows


__all__ = ["load_hf_split", "vqa_rows"]
