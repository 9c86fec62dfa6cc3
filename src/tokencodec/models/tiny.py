"""Tiny random-weight LLaVA, LLaVA-NeXT, Qwen2-VL and LLaVA-OneVision checkpoints, saved like real ones
(``save_pretrained``).

No model hub is reachable where tokencodec is tested, so the real-model paths (``from_pretrained`` by
folder, the processors, ``generate``, the lmms-eval plugin) are exercised on these: the real
architectures and processors at toy sizes, random weights (their answers are noise; what is checked
is that every method runs and is accounted for). A word-level tokenizer (the ``tokenizers``
library; no vocabulary file to download) knows the special tokens each processor needs.

    python -m tokencodec.models.tiny llava /tmp/tiny-llava      # or llava-next, qwen2-vl, llava-onevision
"""

from __future__ import annotations

import sys
from pathlib import Path

WORDS = ("yes no is there a an the in on of what colour color which how many image picture photo cat dog "
         "red green blue circle square triangle answer question using single word or phrase ? . , :").split()
LLAVA_SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>")
OV_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
FAMILIES = ("llava", "llava-next", "qwen2-vl", "llava-onevision")
# LLaVA-NeXT's AnyRes grids at toy size: 32 px views (LLaVA-NeXT's 336 px pinpoints scaled by 32/336)
TINY_PINPOINTS = [[32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]


def word_tokenizer(special: tuple[str, ...], unk: str, **names):
    """A PreTrainedTokenizerFast over WORDS (lower-cased, split on spaces and punctuation)."""
    import tokenizers
    from tokenizers import models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(dict.fromkeys((*special, unk, "user", "assistant", "system", *WORDS)))}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens(list(special))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, **names)


def save_tiny_llava(folder: str | Path, seed: int = 0) -> Path:
    """A LLaVA-1.5-shaped checkpoint: CLIP tower (32 px, 8 px patches: 16 image tokens) + a 4-layer Llama."""
    import torch
    import transformers

    folder = Path(folder)
    tok = word_tokenizer(LLAVA_SPECIAL, "<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    image_id = tok.convert_tokens_to_ids("<image>")
    vc = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=32, patch_size=8)
    tc = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512,
                                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id)
    cfg = transformers.LlavaConfig(vision_config=vc, text_config=tc, image_token_id=image_id, image_seq_length=16)
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    processor = transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                                        crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_llava_next(folder: str | Path, seed: int = 0) -> Path:
    """A LLaVA-NeXT-shaped checkpoint: the tiny LLaVA's CLIP tower and Llama, AnyRes views of 32 px (16 patches),
    up to 2×2 crops, an ``image_newline``; the PIL image processor (the default one needs torchvision)."""
    import torch
    import transformers

    folder = Path(folder)
    tok = word_tokenizer(LLAVA_SPECIAL, "<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    vc = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=32, patch_size=8)
    tc = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512,
                                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id)
    cfg = transformers.LlavaNextConfig(vision_config=vc, text_config=tc, image_token_id=tok.convert_tokens_to_ids(
        "<image>"), image_grid_pinpoints=TINY_PINPOINTS)
    torch.manual_seed(seed)
    model = transformers.LlavaNextForConditionalGeneration(cfg).eval()
    images = transformers.LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                     image_grid_pinpoints=TINY_PINPOINTS)
    processor = transformers.LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=8,
                                                vision_feature_select_strategy="default", num_additional_image_tokens=1)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_qwen2_vl(folder: str | Path, seed: int = 0) -> Path:
    """A Qwen2-VL-shaped checkpoint: 2-block ViT (14 px patches, 2×2 merge) + a 4-layer Qwen2 with M-RoPE."""
    import torch
    import transformers

    folder = Path(folder)
    tok = word_tokenizer(QWEN_SPECIAL, "<|endoftext|>", pad_token="<|endoftext|>", eos_token="<|im_end|>")
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (("image_token_id", "<|image_pad|>"),
           ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
           ("vision_end_token_id", "<|vision_end|>"))}
    vision = dict(depth=2, num_heads=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                  embed_dim=32, mlp_ratio=2, hidden_size=64)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=2048,
                bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rope_scaling=dict(type="mrope", mrope_section=[2, 3, 3]))
    torch.manual_seed(seed)
    model = transformers.Qwen2VLForConditionalGeneration(
        transformers.Qwen2VLConfig(vision_config=vision, text_config=text, **ids)).eval()
    # the PIL image processor (the default one needs torchvision); 56–112 px: 4–16 merged image tokens. The
    # tokenizer and image processor are saved apart: Qwen2VLProcessor insists on a video processor, which
    # needs torchvision (tokencodec.models.hf expands the image tokens as the processor does)
    images = transformers.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    images.save_pretrained(folder)
    return folder


OV_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def llava_onevision_config(vocab_size: int, image_token_id: int, video_token_id: int, *, text_layers: int = 4,
                           pad_token_id: int | None = None, eos_token_id: int | None = None, head: bool = False,
                           vision_aspect_ratio: str = "anyres_max_9"):
    """A toy ``LlavaOnevisionConfig``: 3-layer SigLIP (32 px, 4 px patches: 8×8 = 64 tokens per view; no
    attention-pooling head unless ``head``, as OV's checkpoints), AnyRes pinpoints of 1–2 × 1–2 crops, a Qwen2
    of ``text_layers``. An image sends 64 + h′·(w′ + 1) tokens, a T-frame video T·16 + 1 (4×4 pooled frames and
    one newline)."""
    import transformers

    vc = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, image_size=32, patch_size=4, vision_use_head=head)
    tc = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=text_layers,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size,
                                  max_position_embeddings=4096, bos_token_id=None, eos_token_id=eos_token_id,
                                  pad_token_id=pad_token_id)
    return transformers.LlavaOnevisionConfig(
        vision_config=vc, text_config=tc, image_token_index=image_token_id, video_token_index=video_token_id,
        image_grid_pinpoints=OV_PINPOINTS, vision_feature_layer=-1, vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio)


def save_tiny_llava_onevision(folder: str | Path, seed: int = 0) -> Path:
    """A LLaVA-OneVision-shaped checkpoint (:func:`llava_onevision_config`, a 4-layer Qwen2)."""
    import torch
    import transformers

    folder = Path(folder)
    tok = word_tokenizer(OV_SPECIAL, "<|endoftext|>", pad_token="<|endoftext|>", eos_token="<|im_end|>")
    cfg = llava_onevision_config(len(tok), tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<video>"),
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = transformers.LlavaOnevisionForConditionalGeneration(cfg).eval()
    # the PIL image processor and the tokenizer, saved apart: LlavaOnevisionProcessor needs a video processor,
    # which needs torchvision (tokencodec.models.prompts expands <image> as the processor does)
    images = transformers.LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32},
                                                          image_grid_pinpoints=OV_PINPOINTS)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    images.save_pretrained(folder)
    return folder


SAVERS = {"llava": save_tiny_llava, "llava-next": save_tiny_llava_next, "qwen2-vl": save_tiny_qwen2_vl,
          "llava-onevision": save_tiny_llava_onevision}


def save_tiny(family: str, folder: str | Path, seed: int = 0) -> Path:
    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: allowed {', '.join(FAMILIES)}")
    return SAVERS[family](folder, seed)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: python -m tokencodec.models.tiny {{{'|'.join(FAMILIES)}}} FOLDER")
    print(save_tiny(sys.argv[1], sys.argv[2]))
