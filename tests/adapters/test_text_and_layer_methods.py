"""CDPruner's relevance embeddings and FlowCut's layer-by-layer pruning, through the tower, ViT-classifier and
LLaVA adapters, on tiny random models built from configs (offline, seeded).

Each path is checked against the method's own functions run by hand on the same tensors: the adapters only
supply signals and apply the result, so the kept sets must be identical (torch.equal).
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import tokencodec  # noqa: E402
from tokencodec.adapters.encoder_pruning import EncoderPruningPatch  # noqa: E402
from tokencodec.adapters.llava import LlavaTokenCompression  # noqa: E402
from tokencodec.adapters.relevance import clip_text_embedding  # noqa: E402
from tokencodec.adapters.support import support_matrix  # noqa: E402
from tokencodec.adapters.vision_tower import CLIPTowerCompressor  # noqa: E402
from tokencodec.tokens.compress.base import Budget  # noqa: E402
from tokencodec.tokens.compress.cdpruner import cdpruner_select  # noqa: E402

from ..tokens.test_flowcut import reference_flowcut  # noqa: E402
from .test_llava_adapter import IMG, LAYERS, N, make  # noqa: E402

WORDS = ["what", "colour", "is", "the", "red", "square", "circle", "?", "left", "of"]


def tiny_llava(attn: str = "sdpa", seed: int = 0):
    return make(attn, seed)


def llava_inputs(batch: int = 2, seed: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[1, 5, 6] + [IMG] * N + [7, 8, 9, 10]] * batch)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                pixel_values=torch.randn(batch, 3, 32, 32, generator=g))


def clip_pair(seed: int = 0, projection_dim: int = 16, sharp: float = 1.0):
    """A CLIPVisionModelWithProjection (6 layers, 36 patches) and a CLIPTextModelWithProjection with a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    torch.manual_seed(seed)
    vision = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4, image_size=48,
        patch_size=8, projection_dim=projection_dim)).eval()
    with torch.no_grad():
        for layer in vision.vision_model.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(sharp)
            layer.self_attn.k_proj.weight.mul_(sharp)
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                     pad_token="<pad>", unk_token="<unk>")
    text = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=projection_dim, bos_token_id=1, eos_token_id=2,
        pad_token_id=0)).eval()
    return vision, text, tokenizer


# -- the support matrix -------------------------------------------------------------------------------------------

def test_the_matrix_has_cdpruner_and_flowcut_where_their_signals_are_supplied():
    m = support_matrix()
    assert m["cdpruner"]["CLIP tower"] == "yes" and m["cdpruner"]["LLaVA-1.5"] == "yes"
    assert m["cdpruner"]["SigLIP tower"] == "—" and m["cdpruner"]["ViT classifier"] == "—"
    assert m["flowcut"]["CLIP tower"] == m["flowcut"]["LLaVA-1.5"] == m["flowcut"]["ViT classifier"] == "yes"
    assert m["flowcut"]["SigLIP tower"] == "—"           # needs the CLS, declares no fallback
    assert m["tome"]["CLIP tower"] == "yes"               # still ToMe's own patch


# -- FlowCut inside a tower ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_flowcut_in_the_clip_tower_equals_the_shrinking_reference(attn):
    vision, _, _ = clip_pair(seed=1, sharp=12.0)
    vision.set_attn_implementation(attn)
    tower = vision.vision_model
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    patch = tokencodec.compress(vision, "flowcut", Budget(keep=6), layer=4)
    assert isinstance(patch, EncoderPruningPatch)
    with torch.no_grad(), patch:
        out = vision(pixel_values=pixels, output_hidden_states=True)
    rec = patch.record()
    for i in range(2):
        with torch.no_grad():
            want, h = reference_flowcut(tower, pixels[i:i + 1], 6, 4)
        assert torch.equal(rec.kept.positions[i:i + 1], want)
        torch.testing.assert_close(out.hidden_states[5][i:i + 1], h, rtol=1e-4, atol=1e-4)
    assert rec.tokens_per_layer == [37] * 4 + [7] * 2                # the last cut after layer 3
    assert [h.shape[1] for h in out.hidden_states] == [37] * 4 + [7] * 3
    torch.testing.assert_close(rec.kept.features, out.hidden_states[5][:, 1:])
    with torch.no_grad():                                          # hooks gone: the model is whole again
        assert vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-1].shape[1] == 37


def test_flowcut_at_a_full_budget_leaves_the_tower_unchanged():
    vision, _, _ = clip_pair(seed=2)
    pixels = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = vision(pixel_values=pixels).last_hidden_state
        with EncoderPruningPatch(vision, "flowcut", Budget(ratio=1.0)) as patch:
            full = vision(pixel_values=pixels).last_hidden_state
    assert torch.equal(patch.record().kept.positions, torch.arange(36)[None])
    torch.testing.assert_close(full, plain)


def test_flowcut_refusals():
    vision, _, _ = clip_pair()
    with pytest.raises(ValueError, match="layer 1 or later"):
        EncoderPruningPatch(vision, "flowcut", 4, layer=0)
    with pytest.raises(ValueError, match="encoder_run"):
        EncoderPruningPatch(vision, "tome", 4)
    siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8))
    with pytest.raises(ValueError, match="CLS"):
        EncoderPruningPatch(siglip, "flowcut", 4)


def test_flowcut_in_the_vit_classifier_cuts_after_the_prune_layer():
    from tokencodec.models.fashion_vit import FashionViT

    torch.manual_seed(0)
    vit = FashionViT().eval()
    x = torch.randn(3, 1, 56, 56, generator=torch.Generator().manual_seed(0))
    patch = tokencodec.compress(vit, "flowcut", Budget(ratio=0.25))
    assert isinstance(patch, EncoderPruningPatch) and patch.layer == 2
    with torch.no_grad():
        with patch:
            logits = vit(x)
        alone = []
        for i in range(3):
            with tokencodec.compress(vit, "flowcut", Budget(ratio=0.25)) as one:
                alone.append(vit(x[i:i + 1]))
            assert torch.equal(one.record().kept.positions, patch.record().kept.positions[i:i + 1])
    # layers 0 and 1 see every patch, the last cut is after layer 1 (the observer's prune_layer), 2 and 3 see K
    assert patch.record().tokens_per_layer == [197, 197, 50, 50]
    torch.testing.assert_close(torch.cat(alone), logits, rtol=1e-5, atol=1e-5)


# -- FlowCut through LLaVA ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_flowcut_through_llava_sends_the_towers_kept_patches_with_renumbered_positions(attn):
    model, inputs = tiny_llava(attn), llava_inputs()
    tower = model.model.vision_tower
    with torch.no_grad():
        with EncoderPruningPatch(tower, "flowcut", Budget(keep=4), layer=-2) as alone:
            tower(pixel_values=inputs["pixel_values"])
        seen = {}
        with tokencodec.compress(model, "flowcut", Budget(keep=4)) as patch:
            handle = model.model.language_model.register_forward_pre_hook(   # after the adapter's own pre-hook
                lambda m, a, k: seen.update(pos=k["position_ids"]), with_kwargs=True)
            logits = model(**inputs).logits
            handle.remove()
    rec = patch.record()
    assert isinstance(patch, LlavaTokenCompression)
    assert torch.equal(rec.kept.positions, alone.record().kept.positions)
    assert rec.tokens_per_layer == [4] * LAYERS and rec.vision_tokens_per_layer == [17, 5, 5]
    assert logits.shape[1] == inputs["input_ids"].shape[1] - (N - 4)
    assert torch.equal(seen["pos"], torch.arange(3 + 4 + 4).expand(2, -1))       # official: contiguous ids


def test_flowcut_through_llava_at_a_full_budget_equals_the_unpatched_model():
    model, inputs = tiny_llava(), llava_inputs()
    with torch.no_grad():
        plain = model(**inputs).logits
        with tokencodec.compress(model, "flowcut", Budget(ratio=1.0)):
            full = model(**inputs).logits
    torch.testing.assert_close(full, plain)


def test_flowcut_rows_of_a_batch_equal_each_sample_alone():
    model, inputs = tiny_llava(), llava_inputs(batch=3, seed=4)
    with torch.no_grad():
        with tokencodec.compress(model, "flowcut", Budget(keep=5)):
            both = model(**inputs).logits
        for i in range(3):
            one = {k: v[i:i + 1] for k, v in inputs.items()}
            with tokencodec.compress(model, "flowcut", Budget(keep=5)):
                torch.testing.assert_close(model(**one).logits, both[i:i + 1], rtol=1e-5, atol=1e-5)


# -- CDPruner's embeddings -----------------------------------------------------------------------------------------

def test_clip_text_embedding_chunks_long_questions_by_77_as_the_official_code():
    _, text, tokenizer = clip_pair()
    short, long = "what colour is the red square ?", " ".join(["the red square"] * 30)   # 2 + 90 tokens: 2 chunks
    emb, real = clip_text_embedding(text, tokenizer, [short, long])
    assert emb.shape == (2, 2, 16) and real.tolist() == [[True, False], [True, True]]
    ids = tokenizer(text=[long], return_tensors="pt")["input_ids"]
    padded = torch.cat([ids, ids.new_zeros(1, 154 - ids.shape[1])], 1).reshape(2, 77)
    mask = torch.cat([torch.ones(1, ids.shape[1], dtype=torch.long), torch.zeros(1, 154 - ids.shape[1],
                                                                                  dtype=torch.long)], 1).reshape(2, 77)
    with torch.no_grad():
        want = text(input_ids=padded, attention_mask=mask).text_embeds
    torch.testing.assert_close(emb[1], want)
    assert torch.equal(emb[0, 1], torch.zeros(16))


def test_cdpruner_on_a_clip_tower_with_projection_equals_the_method_on_hand_built_signals():
    vision, text, tokenizer = clip_pair(seed=3)
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    question = "what colour is the red circle ?"
    patch = tokencodec.compress(vision, "cdpruner", Budget(keep=9), text_encoder=text, text_tokenizer=tokenizer,
                                question=question)
    assert isinstance(patch, CLIPTowerCompressor)
    with torch.no_grad():
        out = patch.compress(pixels)
        hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        image = vision.visual_projection(vision.vision_model.post_layernorm(hidden))
        txt, _ = clip_text_embedding(text, tokenizer, question)
    want = cdpruner_select(hidden, image, txt.expand(2, -1, -1), 9)
    assert torch.equal(out.positions, want)
    assert torch.equal(out.context["text_embedding"], txt)


def test_cdpruner_through_llava_clip_space_reads_projected_tokens_and_clip_relevance():
    model, inputs = tiny_llava(), llava_inputs()
    proj = torch.nn.Linear(32, 16, bias=False)
    text = torch.randn(1, 2, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        with tokencodec.compress(model, "cdpruner", Budget(keep=4), visual_projection=proj,
                                 text_embedding=text) as patch:
            logits = model(**inputs).logits
        tower = model.model.vision_tower
        hidden = tower(pixel_values=inputs["pixel_values"], output_hidden_states=True).hidden_states[-2][:, 1:]
        projected = model.model.multi_modal_projector(hidden)
        want = cdpruner_select(projected, proj(tower.post_layernorm(hidden)), text.expand(2, -1, -1), 4)
    rec = patch.record()
    assert torch.equal(rec.kept.positions, want)
    assert rec.tokens_per_layer == [4] * LAYERS and rec.projector_tokens == N      # ranked on every projected token
    assert logits.shape[1] == inputs["input_ids"].shape[1] - (N - 4)


def test_cdpruner_through_llava_llm_input_space_is_a_named_deviation():
    model, inputs = tiny_llava(), llava_inputs()
    question = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        with tokencodec.compress(model, "cdpruner", Budget(keep=4), embedding_space="llm-input",
                                 question_ids=question, question_mask=mask) as patch:
            model(**inputs)
        hidden = model.model.vision_tower(pixel_values=inputs["pixel_values"],
                                          output_hidden_states=True).hidden_states[-2][:, 1:]
        projected = model.model.multi_modal_projector(hidden)
        txt = model.model.get_input_embeddings()(question)
    want = cdpruner_select(projected, projected, txt, 4, text_mask=mask)
    assert torch.equal(patch.record().kept.positions, want)


def test_cdpruner_refuses_without_its_embeddings_and_other_methods_refuse_its_options():
    model, vision = tiny_llava(), clip_pair()[0]
    with pytest.raises(ValueError, match="visual_projection="):
        tokencodec.compress(model, "cdpruner", Budget(keep=4))
    with pytest.raises(ValueError, match="text_embedding= .* or text_encoder="):
        tokencodec.compress(vision, "cdpruner", Budget(keep=4))
    with pytest.raises(ValueError, match="needs an MLLM"):
        tokencodec.compress(vision, "cdpruner", Budget(keep=4), embedding_space="llm-input",
                            question_ids=torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="embedding_space="):
        tokencodec.compress(model, "cdpruner", Budget(keep=4), embedding_space="siglip")
    with pytest.raises(TypeError, match="text-guided"):
        tokencodec.compress(model, "visionzip", Budget(keep=4), question="what ?")
    with pytest.raises(TypeError, match="text-guided"):
        tokencodec.compress(model, "flowcut", Budget(keep=4), question="what ?")
    with pytest.raises(ValueError, match="width 8"):
        tokencodec.compress(vision, "cdpruner", Budget(keep=4), text_embedding=torch.randn(1, 1, 8))
