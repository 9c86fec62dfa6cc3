"""The real-model observer on a tiny save_pretrained checkpoint and a local HF data set; clear errors when
the weights or the data are absent."""

import pytest

pytest.importorskip("datasets")

from tokencodec.data import DatasetError  # noqa: E402
from tokencodec.models.hf import HFMLLM, ModelNotFoundError  # noqa: E402
from tokencodec.models.tiny import save_tiny  # noqa: E402
from tokencodec.observers import ObserverSpec  # noqa: E402


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    from tokencodec.integrations.lmms_task import write_task

    root = tmp_path_factory.mktemp("hf")
    write_task(root / "task", n=5)
    return save_tiny("llava", root / "llava"), save_tiny("qwen2-vl", root / "qwen"), root / "task" / "data"


@pytest.mark.parametrize("family", [0, 1])
def test_study_sweep_on_a_tiny_hf_model_and_local_data(local, family, tmp_path):
    from tokencodec.bench.engine import run_sweep
    from tokencodec.pipeline import PipelineSpec

    model, data = local[family], local[2]
    spec = ObserverSpec("hf-mllm", {"model": str(model), "max_new_tokens": 2})
    spec.check_data({"dataset": str(data), "limit": 3})
    obs = spec.build()
    samples = obs.samples(dataset=str(data), limit=3)
    assert len(samples) == 3 and samples[0].payload["answer"]
    specs = [PipelineSpec(method="divprune", keep_ratios=(1.0, 0.25)), PipelineSpec(codec="jpeg", qualities=(30,))]
    curves = run_sweep(obs, samples, specs, tmp_path)
    quarter, full = curves["divprune"].points         # ascending rate
    assert quarter.values["tokens"] < full.values["tokens"] and quarter.values["flops"] < full.values["flops"]
    assert full.values["agreement"] == 1.0              # keep 1: the uncompressed answer
    assert curves["jpeg"].points[0].values["bpp"] > 0 and curves["jpeg"].points[0].values["latency_s"] > 0


def test_absent_weights_and_data_are_named(tmp_path, local):
    from tokencodec.data.hf_datasets import load_hf_split, vqa_rows

    with pytest.raises(ModelNotFoundError, match=str(tmp_path / "nothing")):
        HFMLLM.load(str(tmp_path / "nothing"))
    with pytest.raises(DatasetError, match="does not exist"):
        load_hf_split(str(tmp_path / "no-data"))
    with pytest.raises(DatasetError, match="no split 'val'; it has test"):
        load_hf_split(str(local[2]), "val")
    with pytest.raises(DatasetError, match=r"columns \['caption'\] not in the data set"):
        vqa_rows(load_hf_split(str(local[2])), {"image": "image", "question": "caption", "answer": "answer"})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="supported families: llava, .*qwen2_vl"):
        HFMLLM.load(str(tmp_path / "bad"))


def test_a_checkpoint_chat_template_builds_the_prompt(local):
    import numpy as np

    mllm = HFMLLM.load(str(local[0]))
    assert mllm.prompt("is it red?") == "USER: <image>\nis it red? ASSISTANT:"       # the LLaVA-1.5 fallback
    # llava-hf/llava-1.5-7b-hf's template, in short: images first, then the text
    mllm.processor.chat_template = (
        "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %} ASSISTANT:{% endif %}")
    assert mllm.prompt("is it red?") == "USER: <image>\nis it red? ASSISTANT:"
    ids = mllm.inputs([np.zeros((32, 32, 3), np.uint8)], "<image>\nis it red?")["input_ids"]
    assert int((ids == mllm.image_token_id).sum()) == 16         # the task's own placeholder is not doubled
