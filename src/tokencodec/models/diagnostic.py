"""The diagnostic MLLM: a small LLaVA trained here on the procedural VQA task (``tokencodec.data.vqa``).

No vision-language model with weights installs offline, so the toolkit brings its own observer. It
is built from the same transformers classes as LLaVA-1.5, ``LlavaForConditionalGeneration`` =
CLIP vision tower (``CLIPVisionConfig``, with its CLS token) + LLaVA's two-layer GELU projector +
Llama language model (``LlamaConfig``), so adapters written for LLaVA run on it unchanged.

Conventions (the same as LLaVA-1.5):

- **Image tokens.** 64×64 images, 8-pixel patches: the tower sees CLS + 64 patch tokens; the LLM
  gets the 64 patch tokens (``vision_feature_select_strategy="default"`` drops CLS), one per object
  cell of the data set's 8×8 grid.
- **Feature layer.** ``vision_feature_layer = -2``: the LLM reads the output of the tower's
  second-to-last layer, as LLaVA-1.5 does (and as ``tokencodec.adapters.vision_tower`` assumes by
  default). The last tower layer still does work: during training an auxiliary head reads its CLS
  (the pooled output) to predict which colour-shape pairs the scene holds, so CLS attention
  (VisionZip, PruMerge) points at the objects as it does in a contrastively trained CLIP.
- **Pixels.** ``(x / 255 - 0.5) / 0.5`` per channel (:func:`preprocess`).
- **Prompt.** ``"<s>" + "<image>" × 64 + question`` (e.g. ``... what colour is the small square ?``);
  the image comes first, the question after, as in LLaVA. The tokenizer is a ``tokenizers``
  WordLevel model over the data set's vocabulary with special tokens ``<pad>``, ``<unk>``, ``<s>``
  and ``<image>`` (whose id is the model's ``image_token_id``); batches are right-padded.
- **Answering.** One forward pass; the answer is the argmax of the logits at the last prompt token
  (the ``?``) over the answer words (:data:`tokencodec.data.vqa.ANSWERS`) only: the same as one
  step of greedy generation restricted to answers. Training used the answer-only loss at that
  position.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tokencodec.data.vqa import ANSWERS, GRID, IMAGE_SIZE, PATCH, vocabulary

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "diagnostic"
VIDEO_WEIGHTS_DIR = WEIGHTS_DIR.with_name("diagnostic-video")  # fine-tuned on VideoVQADataset
ANSWERS_FILE = "answers.json"  # a folder's answer words, when they are not the image task's
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "<image>")
PAD, UNK, BOS, IMAGE = SPECIAL_TOKENS
N_IMAGE_TOKENS = GRID * GRID
TOKENIZER_FILE = "tokenizer.json"

DEFAULT_CONFIG: dict = dict(
    vision_hidden=64, vision_layers=3, vision_heads=4, vision_intermediate=256,
    text_hidden=96, text_layers=4, text_heads=4, text_intermediate=256,
    vision_feature_layer=-2, attn_implementation="sdpa", text_init_std=0.1,
)


class ModelNotFoundError(FileNotFoundError):
    """The weights folder (or a file in it) is missing; the message names the path."""


# -- tokenizer and prompt --------------------------------------------------------------------------

def build_tokenizer(words: Iterable[str] | None = None):
    """A ``tokenizers`` WordLevel tokenizer: special tokens first (ids 0–3), then the words, sorted.

    Splits on whitespace and punctuation (``"square?"`` → ``square``, ``?``); ``<image>`` is matched
    as a special token before splitting, so ``"<image><image>"`` is two tokens.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(vocabulary() if words is None else words) - set(SPECIAL_TOKENS))
    vocab = {t: i for i, t in enumerate((*SPECIAL_TOKENS, *words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.enable_padding(pad_id=vocab[PAD], pad_token=PAD, direction="right")
    return tok


def build_prompt(question: str, n_image_tokens: int = N_IMAGE_TOKENS) -> str:
    """``<s> question <image>…<image> question ?`` (the answer is predicted after the final ``?``).

    The question is given before the image as well as after it. In a causal LM the image tokens can
    then read the question and mark the objects it names, so the answer position needs one lookup
    instead of two; the layout stays LLaVA's (text after the image, where text-guided pruning
    methods look). The first copy drops its ``?`` so that the answer position is unique.
    """
    head = question.rstrip().removesuffix("?").rstrip()
    return BOS + head + " " + IMAGE * n_image_tokens + " " + question


def preprocess(images: np.ndarray | Sequence[np.ndarray] | Tensor) -> Tensor:
    """uint8 images (B×H×W×3 or a list of H×W×3) → float pixel values B×3×H×W in [-1, 1]."""
    if isinstance(images, Tensor):
        x = images
    else:
        x = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)) if not isinstance(images, np.ndarray)
                                                  else images))
    if x.ndim == 3:
        x = x[None]
    if x.shape[-1] != 3 or tuple(x.shape[1:3]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"expected B×{IMAGE_SIZE}×{IMAGE_SIZE}×3 uint8 images, got shape {tuple(x.shape)}")
    return (x.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


# -- model -----------------------------------------------------------------------------------------

def _vocab_of(vocab) -> dict[str, int]:
    if isinstance(vocab, Mapping):
        return dict(vocab)
    if hasattr(vocab, "get_vocab"):
        return dict(vocab.get_vocab())
    return {w: i for i, w in enumerate(vocab)}


def build_diagnostic_model(vocab=None, *, vision_hidden: int = 64, vision_layers: int = 3, vision_heads: int = 4,
                           vision_intermediate: int = 256, text_hidden: int = 96, text_layers: int = 4,
                           text_heads: int = 4, text_intermediate: int = 256, vision_feature_layer: int = -2,
                           attn_implementation: str = "sdpa", text_init_std: float = 0.1, seed: int | None = 0):
    """A randomly initialised ``LlavaForConditionalGeneration`` for the diagnostic task.

    ``vocab``: the tokenizer (or its ``{token: id}`` dict); ``None`` builds :func:`build_tokenizer`.
    It must hold ``<pad>``, ``<s>`` and ``<image>``. ``attn_implementation``: ``"sdpa"`` or
    ``"eager"`` (eager returns attention weights). ``text_init_std``: the LM's ``initializer_range``
    (Llama's 0.02 is made for wide models; at width 96 it leaves attention logits near zero and training
    stalls). ``seed`` fixes the initialisation.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    v = _vocab_of(build_tokenizer() if vocab is None else vocab)
    missing = [t for t in (PAD, BOS, IMAGE) if t not in v]
    if missing:
        raise ValueError(f"vocabulary lacks the special tokens {missing}")
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=vision_intermediate,
                              num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
                              image_size=IMAGE_SIZE, patch_size=PATCH, num_channels=3, projection_dim=vision_hidden)
    text = LlamaConfig(vocab_size=max(v.values()) + 1, hidden_size=text_hidden, intermediate_size=text_intermediate,
                       num_hidden_layers=text_layers, num_attention_heads=text_heads, num_key_value_heads=text_heads,
                       max_position_embeddings=256, pad_token_id=v[PAD], bos_token_id=v[BOS], eos_token_id=v[PAD],
                       tie_word_embeddings=False, initializer_range=text_init_std)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=v[IMAGE],
                         image_seq_length=N_IMAGE_TOKENS, vision_feature_layer=vision_feature_layer,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    config.pad_token_id = v[PAD]
    if seed is not None:
        torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.set_attn_implementation(attn_implementation)
    return model.eval()


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the helper ------------------------------------------------------------------------------------

def pixels(sample) -> np.ndarray:
    """A VQA sample's image (H×W×3) or a video sample's frames (T×H×W×3)."""
    return sample.frames if hasattr(sample, "frames") else sample.image


class DiagnosticMLLM:
    """The model, its tokenizer and the answer vocabulary, with ``answer`` and ``evaluate``."""

    def __init__(self, model, tokenizer, answers: Sequence[str] = ANSWERS):
        self.model, self.tokenizer = model, tokenizer
        self.answers = tuple(answers)
        ids = [tokenizer.token_to_id(a) for a in self.answers]
        if any(i is None for i in ids):
            missing = [a for a, i in zip(self.answers, ids, strict=True) if i is None]
            raise ValueError(f"answers missing from the tokenizer: {missing}")
        self.answer_ids = torch.tensor(ids)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, *, attn_implementation: str = "sdpa",
                        device: str | torch.device = "cpu") -> DiagnosticMLLM:
        """Load from ``path`` (a folder with config.json, model.safetensors, tokenizer.json, and
        answers.json when its answer words are not the image task's); ``None`` loads the weights
        shipped in the package (``tokencodec/models/weights/diagnostic``). Offline."""
        import json

        from tokenizers import Tokenizer
        from transformers import LlavaForConditionalGeneration

        folder = Path(WEIGHTS_DIR if path is None else path)
        if not folder.is_dir():
            raise ModelNotFoundError(f"diagnostic model folder not found: {folder}")
        for name in ("config.json", "model.safetensors", TOKENIZER_FILE):
            if not (folder / name).is_file():
                raise ModelNotFoundError(f"diagnostic model file not found: {folder / name}")
        model = LlavaForConditionalGeneration.from_pretrained(folder, attn_implementation=attn_implementation,
                                                              local_files_only=True)
        tok = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        tok.enable_padding(pad_id=tok.token_to_id(PAD), pad_token=PAD, direction="right")
        answers = folder / ANSWERS_FILE
        return cls(model.to(device).eval(), tok,
                   tuple(json.loads(answers.read_text())) if answers.is_file() else ANSWERS)

    def save_pretrained(self, path: str | Path) -> None:
        import json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save(str(path / TOKENIZER_FILE))
        if self.answers != tuple(ANSWERS):
            (path / ANSWERS_FILE).write_text(json.dumps(list(self.answers)))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, questions: Sequence[str], frames: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """(input_ids, attention_mask, index of each prompt's last token), right-padded; a video of
        ``frames`` frames puts its frames' image tokens one after the other (LLaVA's multi-image layout)."""
        enc = self.tokenizer.encode_batch([build_prompt(q, N_IMAGE_TOKENS * frames) for q in questions])
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        return ids, mask, mask.sum(1) - 1

    def inputs(self, images, questions: Sequence[str]) -> dict[str, Tensor]:
        """The keyword arguments of ``model(...)`` for a batch (plus ``last``: the answer positions).

        ``images``: B×H×W×3 (one image per question) or B×T×H×W×3 (a video per question: the T frames
        go to the tower as T images, in order)."""
        frames = 1
        if not isinstance(images, Tensor):
            images = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
        if images.ndim == 5:
            frames = images.shape[1]
            images = images.reshape(-1, *images.shape[2:])
        ids, mask, last = self.encode(questions, frames)
        dev = self.device
        return dict(input_ids=ids.to(dev), attention_mask=mask.to(dev), pixel_values=preprocess(images).to(dev),
                    last=last.to(dev))

    def answer_logits(self, images, questions: Sequence[str], **forward_kw) -> Tensor:
        """Logits over :attr:`answers` at each prompt's last token: B×len(answers)."""
        kw = self.inputs(images, questions)
        last = kw.pop("last")
        out = self.model(**kw, **forward_kw)
        logits = out.logits[torch.arange(len(last), device=last.device), last]
        return logits[:, self.answer_ids.to(logits.device)]

    @torch.no_grad()
    def answer(self, images, questions: Sequence[str]) -> list[str]:
        """One forward pass; argmax over the answer words at the answer position."""
        self.model.eval()
        pred = self.answer_logits(images, questions).argmax(-1).tolist()
        return [self.answers[i] for i in pred]

    @torch.no_grad()
    def evaluate(self, dataset: Iterable, batch_size: int = 100) -> dict:
        """``{"overall": acc, "per_type": {qtype: acc}, "n": count}`` over a VQA data set."""
        right: dict[str, int] = defaultdict(int)
        total: dict[str, int] = defaultdict(int)
        batch: list = []

        def flush():
            preds = self.answer([pixels(s) for s in batch], [s.question for s in batch])
            for s, p in zip(batch, preds, strict=True):
                total[s.qtype] += 1
                right[s.qtype] += int(p == s.answer)
            batch.clear()

        for s in dataset:
            batch.append(s)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        n = sum(total.values())
        return {"overall": sum(right.values()) / max(n, 1),
                "per_type": {t: right[t] / total[t] for t in sorted(total)}, "n": n}
