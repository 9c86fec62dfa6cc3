"""The diagnostic MLLM: shipped weights load offline and answer the VQA test split; tiny models run."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from tokencodec.data.vqa import ANSWERS, QUESTION_TYPES, VQADataset  # noqa: E402
from tokencodec.models.diagnostic import (  # noqa: E402
    IMAGE,
    N_IMAGE_TOKENS,
    WEIGHTS_DIR,
    DiagnosticMLLM,
    ModelNotFoundError,
    build_diagnostic_model,
    build_prompt,
    build_tokenizer,
    preprocess,
)

# Measured on VQADataset("test", 200, seed=0) with the shipped weights (see MODEL_CARD.md); the
# assertion leaves a small margin for numerical differences across platforms. The target was 0.90.
MEASURED_ACCURACY = 0.905
# question types the shipped model answers (all but) perfectly; relation questions stay near chance
SOLVED_TYPES = ("colour", "small_colour", "shape", "exist", "count")
MARGIN = 0.02

shipped = pytest.mark.skipif(not (WEIGHTS_DIR / "model.safetensors").is_file(),
                             reason="the shipped diagnostic weights are not installed")


@pytest.fixture(scope="module")
def mllm() -> DiagnosticMLLM:
    torch.set_num_threads(2)
    return DiagnosticMLLM.from_pretrained()


@shipped
def test_shipped_model_loads_offline(mllm, monkeypatch):
    assert isinstance(mllm.model, transformers.LlavaForConditionalGeneration)
    cfg = mllm.model.config
    assert cfg.image_token_id == mllm.tokenizer.token_to_id(IMAGE)
    assert cfg.vision_feature_layer == -2 and cfg.vision_config.model_type == "clip_vision_model"
    assert cfg.text_config.model_type == "llama"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = DiagnosticMLLM.from_pretrained(WEIGHTS_DIR, attn_implementation="eager")
    assert again.model.config._attn_implementation == "eager"


@shipped
def test_shipped_model_accuracy(mllm):
    result = mllm.evaluate(VQADataset("test", 200, seed=0))
    assert result["n"] == 200 and set(result["per_type"]) == set(QUESTION_TYPES)
    assert result["overall"] >= MEASURED_ACCURACY - MARGIN, result
    assert all(result["per_type"][t] >= 0.95 for t in SOLVED_TYPES), result


def test_tokenizer_and_prompt():
    tok = build_tokenizer()
    enc = tok.encode(build_prompt("what colour is the small square?"))
    image_id = tok.token_to_id(IMAGE)
    assert enc.ids.count(image_id) == N_IMAGE_TOKENS
    assert enc.tokens[-6:] == ["what", "colour", "is", "the", "small", "square", "?"][-6:]
    assert tok.token_to_id("<unk>") not in enc.ids
    assert all(tok.token_to_id(a) is not None for a in ANSWERS)


def test_tiny_untrained_model_runs_forward():
    tok = build_tokenizer()
    model = build_diagnostic_model(tok, vision_hidden=32, vision_intermediate=64, vision_layers=2, text_hidden=32,
                                   text_intermediate=64, text_layers=2, attn_implementation="eager", seed=0)
    assert model.config.image_token_id == tok.token_to_id(IMAGE)
    mllm = DiagnosticMLLM(model, tok)
    data = VQADataset("val", 3, seed=0)
    answers = mllm.answer([s.image for s in data], [s.question for s in data])
    assert len(answers) == 3 and all(a in ANSWERS for a in answers)
    kw = mllm.inputs([s.image for s in data], [s.question for s in data])
    kw.pop("last")
    out = model(**kw, output_attentions=True)
    assert out.logits.shape[:2] == kw["input_ids"].shape and out.attentions is not None
    assert preprocess(data[0].image).shape == (1, 3, 64, 64)
    from tokencodec.adapters.vision_tower import resolve_tower

    tower = resolve_tower(model)  # the LLaVA vision-tower adapters find the CLIP tower and its CLS
    assert tower.class_token and tower.patch_size == 8 and len(tower.layers) == 2


def test_missing_path_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        DiagnosticMLLM.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        DiagnosticMLLM.from_pretrained(tmp_path)
