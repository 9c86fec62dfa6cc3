"""Host syncs of every registered method, alone and through every adapter, counted on CPU.

``tokencodec.metrics.host_sync.HostSyncs`` emulates a device on CPU (see its docstring), so these
budgets hold in CI without a GPU. Each test prints its counts (``pytest -s`` shows them).

- A method alone, on a batch 2 with every signal it reads (``tests/method_cases.py``: images, and
  3-frame videos per frame or whole), makes at most ``METHOD_SYNC_BUDGET`` syncs: 0, or 1 where
  its card in docs/token-methods.md documents the one data-dependent count it reads.
- Through ``tokencodec.compress`` on tiny models built from configs, a method plus its adapter
  makes at most the method's budget plus ``ADAPTER_SYNC_ALLOWANCE[adapter]``: the adapter syncs
  measured today (models/ is being reworked; the allowance goes down to ≤ 1 as adapters are fixed).
"""

from __future__ import annotations

import pytest
import torch

import tokencodec
from tokencodec.adapters.support import support_matrix
from tokencodec.metrics.host_sync import HostSyncs
from tokencodec.tokens.compress import METHODS, Budget, get_method

from .method_cases import CASES

# -- methods alone ----------------------------------------------------------------------------------

# case label (tests/method_cases.py) → host syncs allowed (default 0); each is documented in the method's
# card (docs/token-methods.md) and module docstring
METHOD_SYNC_BUDGET: dict[str, int] = {
    "random": 1, "random-video": 1,                    # the content seed hashes each image's argmax on the host
    "prumerge-adaptive": 1, "prumerge+-adaptive": 1,   # the IQR counts size the padded batch
    "dct-energy": 1,                                   # the DCT energies pick each image's grid
    "rdo-vbr": 1,                                      # one λ: the per-image counts size the padded batch
    "quadtree": 1, "quadtree-variance": 1, "quadtree-video": 1,   # the greedy tree grows on the host
    "temporal-threshold": 1, "temporal-vbr": 1,        # the per-video counts size the padded batch
    "coded": 2,                                        # the host entropy coder's read, plus the inner random's
    "holitom": 1, "fastvid": 1,                        # length="count": the batch's largest official count
}


@pytest.fixture(autouse=True)
def no_value_checks(monkeypatch):
    """TokenBatch value checks (a debug aid the test suite turns on: tests/conftest.py) are syncs by design."""
    monkeypatch.setattr("tokencodec.tokens.batch.CHECK_VALUES", False)


def method_budget(label: str) -> int:
    return METHOD_SYNC_BUDGET.get(label, 0)


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_every_method_alone_keeps_its_sync_budget(case):
    batch, method = case.build(), case.instance()
    case.run(case.build(), case.instance())            # warm-up: lazy imports and caches are not the hot path
    with HostSyncs() as syncs:
        case.run(batch, method)
    print(f"{case.label}: {syncs}")
    assert syncs.count() <= method_budget(case.label), f"{case.label}: {syncs}"


# -- methods × adapters on tiny models ------------------------------------------------------------

IMG, N = 99, 16               # LLaVA: image token id, 16 patches (32 px, 8 px patches)
LAYERS = 5
LLM_OPTS = {"fastv": dict(layers=2), "dart": dict(layers=2), "pyramiddrop": dict(layers=(1, 2, 3)),
            "sparsevlm": dict(layers=(1, 2, 3)), "holitom-llm": dict(layers=2)}


def tiny_llava():
    transformers = pytest.importorskip("transformers")
    vc = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=32, patch_size=8)
    tc = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                  max_position_embeddings=256, pad_token_id=0)
    torch.manual_seed(0)
    cfg = transformers.LlavaConfig(vision_config=vc, text_config=tc, image_token_id=IMG, image_seq_length=N)
    return transformers.LlavaForConditionalGeneration(cfg).eval()


def llava_inputs(frames: int = 1) -> dict:
    g = torch.Generator().manual_seed(3)
    prompts = [[1, 5, 6] + [IMG] * (frames * N) + [7, 8, 9, 10], [0, 1, 5] + [IMG] * (frames * N) + [7, 8, 9, 10]]
    mask = torch.ones(2, len(prompts[0]), dtype=torch.long)
    mask[1, 0] = 0                                      # the second prompt is left-padded
    return dict(input_ids=torch.tensor(prompts), attention_mask=mask,
                pixel_values=torch.randn(2 * frames, 3, 32, 32, generator=g))


def tiny_llava_next():
    transformers = pytest.importorskip("transformers")
    vc = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=32, patch_size=8)
    tc = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                  max_position_embeddings=512, pad_token_id=0)
    torch.manual_seed(0)
    cfg = transformers.LlavaNextConfig(vision_config=vc, text_config=tc, image_token_id=IMG,
                                       image_grid_pinpoints=[[32, 64], [64, 32], [64, 64], [32, 96], [96, 32]])
    return transformers.LlavaNextForConditionalGeneration(cfg).eval()


def llava_next_inputs(sizes=((20, 50), (64, 64))) -> dict:
    """Two left-padded prompts of one AnyRes image each: 20×50 px (3 views, 52 tokens), 64×64 (5 views, 88)."""
    spans = {(20, 50): 52, (64, 64): 88}
    g = torch.Generator().manual_seed(3)
    rows = [[1, 5, 6] + [IMG] * spans[s] + [7, 8, 9, 10] for s in sizes]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return dict(input_ids=ids, attention_mask=mask, image_sizes=torch.tensor(sizes),
                pixel_values=torch.randn(len(sizes), 5, 3, 32, 32, generator=g))


QIMG, QVID, QVS, QVE = 190, 191, 188, 189


def tiny_qwen2_vl():
    transformers = pytest.importorskip("transformers")
    vision = dict(depth=2, num_heads=4, patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                  embed_dim=32, mlp_ratio=2, hidden_size=64)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=200, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                pad_token_id=0, rope_scaling=dict(type="mrope", mrope_section=[2, 3, 3]))
    torch.manual_seed(0)
    cfg = transformers.Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=QIMG,
                                     video_token_id=QVID, vision_start_token_id=QVS, vision_end_token_id=QVE)
    return transformers.Qwen2VLForConditionalGeneration(cfg).eval()


def qwen_inputs(sizes=((6, 8), (6, 8))) -> dict:
    """Two left-padded prompts of one image each (h×w patches; 2×2 merged tokens)."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for i, (h, w) in enumerate(sizes):
        pre = torch.randint(3, 180, (3 + 2 * i,), generator=g)
        ids = torch.cat([pre, torch.tensor([QVS]), torch.full((h * w // 4,), QIMG), torch.tensor([QVE]),
                         torch.randint(3, 180, (4,), generator=g)])
        rows.append((ids, torch.randn(h * w, 3 * 2 * 4 * 4, generator=g), torch.tensor([[1, h, w]])))
    width = max(len(r[0]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, (x, _, _) in enumerate(rows):
        ids[b, width - len(x):], mask[b, width - len(x):] = x, 1
    return dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == QIMG).int(),
                pixel_values=torch.cat([r[1] for r in rows]), image_grid_thw=torch.cat([r[2] for r in rows]))


OIMG, OVID, OSPAN = 3, 4, 234      # LLaVA-OneVision: 40×60 images → 5 AnyRes views, 64 + 10·(16 + 1) tokens


def tiny_llava_onevision():
    """With SigLIP's pooling head (OV's checkpoints drop it), so FastVID's official signals are supplied."""
    transformers = pytest.importorskip("transformers")
    from tokencodec.models.tiny import llava_onevision_config

    torch.manual_seed(0)
    cfg = llava_onevision_config(50, OIMG, OVID, text_layers=LAYERS, pad_token_id=0, head=True)
    return transformers.LlavaOnevisionForConditionalGeneration(cfg).eval()


def ov_inputs(video: bool = False) -> dict:
    g = torch.Generator().manual_seed(7)
    span, token = (2 * 16 + 1, OVID) if video else (OSPAN, OIMG)     # video: 2 frames of 4×4, one newline
    prompts = [[1, 5, 6] + [token] * span + [7, 8, 9, 10], [0, 1, 5] + [token] * span + [7, 8, 9, 10]]
    mask = torch.ones(2, len(prompts[0]), dtype=torch.long)
    mask[1, 0] = 0
    if video:
        return dict(input_ids=torch.tensor(prompts), attention_mask=mask,
                    pixel_values_videos=torch.randn(2, 2, 3, 32, 32, generator=g))
    return dict(input_ids=torch.tensor(prompts), attention_mask=mask,
                pixel_values=torch.randn(2, 5, 3, 32, 32, generator=g), image_sizes=torch.tensor([[40, 60], [40, 60]]),
                batch_num_images=torch.tensor([1, 1]))


def tiny_clip():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, image_size=32, patch_size=8)
    torch.manual_seed(0)
    return transformers.CLIPVisionModel(cfg).eval()


def tiny_vit_classifier():
    from tokencodec.models.fashion_vit import FashionViT

    torch.manual_seed(0)
    return FashionViT().eval()     # the Fashion-MNIST ViT's architecture (4 layers, 196 patches), random weights


def tiny_efficientnet():
    from tokencodec.models.efficientnet_lite0 import EfficientNetLite0

    torch.manual_seed(0)
    return EfficientNetLite0().eval()


def pre_llm_budget(name: str, n: int) -> Budget:
    return Budget(r=2) if name == "tome" else Budget(keep=max(4, n // 4))


def text_options(name: str) -> dict:
    """CDPruner's relevance space on the tiny CLIP towers (width 32): a projection and a question's embeddings
    (the adapters take them as options: adapters/relevance.py); nothing for other methods."""
    if name != "cdpruner":
        return {}
    g = torch.Generator().manual_seed(7)
    proj = torch.nn.Linear(32, 16, bias=False)
    torch.nn.init.normal_(proj.weight, generator=g)
    return {"visual_projection": proj, "text_embedding": torch.randn(1, 2, 16, generator=g)}


def llm_input_options(name: str) -> dict:
    """The named deviation: CDPruner in the LLM's input-embedding space (question token ids, one padded)."""
    return {"embedding_space": "llm-input", "question_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]),
            "question_mask": torch.tensor([[True, True, True], [True, True, False]])}


# adapter → (model factory, inputs factory, which methods, budget and options per method)
def _llava_pre(name):
    m = METHODS.get(name)
    return m.stage in ("pre-llm", "vision-encoder") and not m.video and name != "coded" and _family("LLaVA-1.5", m)


def _family(label: str, method_cls) -> bool:
    """The family's adapters supply what the method reads (CDPruner's text embeddings: CLIP towers and LLaVA;
    FlowCut's per-layer signals: towers with a CLS)."""
    from tokencodec.adapters.registry import family_named

    return family_named(label).supports(method_cls) != "—"


ADAPTERS = {
    "llava-pre-llm": (tiny_llava, llava_inputs, _llava_pre, lambda name: (pre_llm_budget(name, N), text_options(name))),
    "llava-llm-input": (tiny_llava, llava_inputs, lambda name: name == "cdpruner",
                        lambda name: (Budget(keep=4), llm_input_options(name))),
    "llava-video": (tiny_llava, lambda: llava_inputs(frames=2),
                    lambda name: METHODS.get(name).video and support_matrix()[name]["LLaVA-1.5"] == "video",
                    lambda name: (Budget(keep=24 if name == "temporal" else 16), {"frames": 2})),
    "llava-in-llm": (tiny_llava, llava_inputs, lambda name: METHODS.get(name).stage == "llm",
                     lambda name: (Budget(ratio=0.5) if name == "pyramiddrop" else Budget(keep=4), LLM_OPTS[name])),
    "llava-next-pre-llm": (tiny_llava_next, llava_next_inputs, lambda name: _llava_pre(name) and
                           _family("LLaVA-NeXT", METHODS.get(name)), lambda name: (pre_llm_budget(name, N), {})),
    "llava-next-in-llm": (tiny_llava_next, lambda: llava_next_inputs(((64, 64), (64, 64))),
                          lambda name: METHODS.get(name).stage == "llm",
                          lambda name: (Budget(ratio=0.5) if name == "pyramiddrop" else Budget(keep=8),
                                        LLM_OPTS[name])),
    "qwen2-vl-pre-llm": (tiny_qwen2_vl, lambda: qwen_inputs(((4, 6), (4, 4))),
                         lambda name: _qwen_pre(name), lambda name: (Budget(ratio=0.5), {})),
    "qwen2-vl-in-llm": (tiny_qwen2_vl, qwen_inputs, lambda name: METHODS.get(name).stage == "llm",
                        lambda name: (Budget(ratio=0.5) if name == "pyramiddrop" else Budget(keep=4), LLM_OPTS[name])),
    "clip-tower": (tiny_clip, lambda: dict(pixel_values=torch.randn(2, 3, 32, 32, generator=torch.Generator()
                                                                    .manual_seed(4))),
                   lambda name: METHODS.get(name).stage in ("pre-llm", "vision-encoder")
                   and not METHODS.get(name).video and name != "coded" and _family("CLIP tower", METHODS.get(name)),
                   lambda name: (pre_llm_budget(name, N), {"layer": -1} if name == "tome" else text_options(name))),
    "clip-tower-video": (tiny_clip, lambda: dict(pixel_values=torch.randn(4, 3, 32, 32, generator=torch.Generator()
                                                                          .manual_seed(6))),
                         lambda name: METHODS.get(name).rebuilds_frames, lambda name: (Budget(keep=24), {})),
    "ov-image-pre-llm": (tiny_llava_onevision, ov_inputs, lambda name: _ov_pre(name, video=False),
                         lambda name: (Budget(keep=32), {})),
    "ov-image-in-llm": (tiny_llava_onevision, ov_inputs, lambda name: METHODS.get(name).stage == "llm",
                        lambda name: (Budget(ratio=0.5) if name == "pyramiddrop" else Budget(keep=32), LLM_OPTS[name])),
    "ov-video": (tiny_llava_onevision, lambda: ov_inputs(video=True), lambda name: _ov_pre(name, video=True),
                 lambda name: (Budget(keep={"temporal": 24}.get(name, 16)), {})),
    "ov-video-in-llm": (tiny_llava_onevision, lambda: ov_inputs(video=True),
                        lambda name: METHODS.get(name).stage == "llm",
                        lambda name: (Budget(ratio=0.5) if name == "pyramiddrop" else Budget(keep=8), LLM_OPTS[name])),
    "vit-classifier": (tiny_vit_classifier,
                       lambda: dict(pixel_values=torch.randn(2, 1, 56, 56, generator=torch.Generator().manual_seed(8))),
                       lambda name: METHODS.get(name).stage == "vision-encoder" and _family("ViT classifier",
                                                                                          METHODS.get(name)),
                       lambda name: (pre_llm_budget(name, 196), {})),
    "efficientnet-lite0": (tiny_efficientnet, lambda: dict(x=torch.randn(2, 3, 96, 96, generator=torch.Generator()
                                                                         .manual_seed(5))),
                           lambda name: _efficientnet(name), lambda name: (Budget(keep=4), {})),
}


def _qwen_pre(name: str) -> bool:
    from tokencodec.adapters.qwen2_vl import Qwen2VLTokenCompression

    return Qwen2VLTokenCompression.supports(METHODS.get(name), False) != "—" and name != "coded"


def _ov_pre(name: str, video: bool) -> bool:
    """LLaVA-OneVision's pre-LLM methods: spatial ones per view (images) or per frame (video), video ones on clips."""
    m = METHODS.get(name)
    return m.stage == "pre-llm" and name != "coded" and (video or not m.video) and _family("LLaVA-OneVision", m)


def _efficientnet(name: str) -> bool:
    from tokencodec.adapters.efficientnet import EfficientNetTokenCompression

    return EfficientNetTokenCompression.supports(METHODS.get(name)) != "—" and name != "coded"


ADAPTER_CASES = [(adapter, name) for adapter, (_, _, runs, _) in ADAPTERS.items() for name in METHODS.names()
                 if runs(name)]


# The adapters' own host syncs per forward (lower an entry when a sync goes; never raise one without a reason in
# the adapter's docstring). adapter → {method, or "*" for the others: syncs allowed besides the method's own budget}
ADAPTER_SYNC_ALLOWANCE: dict[str, dict[str, int]] = {
    # LLaVA: none (the image-span layout check runs only with TOKENCODEC_CHECK_VALUES); DART's text pivots need
    # the widest text after a span, read once per prefill (adapters/llm_stages.py, Run.text_width)
    "llava-pre-llm": {"*": 0},
    "llava-llm-input": {"*": 0},
    "llava-video": {"*": 0},
    "llava-in-llm": {"*": 0, "dart": 1},
    # LLaVA-NeXT: one read of the image sizes, which shape each image's span (adapters/llava_next.py,
    # _note_image_sizes; the model reads them there too); DART's text width as on LLaVA
    "llava-next-pre-llm": {"*": 1},
    "llava-next-in-llm": {"*": 1, "dart": 2},
    # Qwen2-VL pre-LLM: one read of the images' grids (and attention chunks), which shape the per-image batches
    # (adapters/qwen2_vl.py, _on_visual); the LLM's row widths follow from shapes with one image per row
    "qwen2-vl-pre-llm": {"*": 1},
    # Qwen2-VL in-LLM: one read of the image counts, span starts and grids, which shape the plan
    # (adapters/qwen2_vl_llm.py, _on_core); DART's text width comes from the same read
    "qwen2-vl-in-llm": {"*": 1},
    # LLaVA-OneVision images: one read of image_sizes (and batch_num_images) per encoding, which decides the packed
    # AnyRes layout (adapters/llava_onevision.py, _image_layout); video: none (shapes); DART's text width as LLaVA's
    "ov-image-pre-llm": {"*": 1},
    "ov-image-in-llm": {"*": 1, "dart": 2},
    "ov-video": {"*": 0},
    "ov-video-in-llm": {"*": 0, "dart": 1},
    "clip-tower": {"*": 0},
    "clip-tower-video": {"*": 0},
    "vit-classifier": {"*": 0},
    "efficientnet-lite0": {"*": 0},
}
# Qwen2-VL's pre-LLM adapter calls the method once per image (each its own batch): its budget counts per call
METHOD_CALLS_PER_FORWARD = {"qwen2-vl-pre-llm": 2, "ov-image-pre-llm": 2}   # OV: once per view (base, grid)


def allowance(adapter: str, name: str) -> int:
    table = ADAPTER_SYNC_ALLOWANCE[adapter]
    own = max((method_budget(c.label) for c in CASES if c.method == name and not c.options and not c.video),
              default=0) if not METHODS.get(name).video else method_budget(name)
    return table.get(name, table["*"]) + own * METHOD_CALLS_PER_FORWARD.get(adapter, 1)

_models: dict = {}


def model_for(adapter: str):
    factory = ADAPTERS[adapter][0]
    if factory not in _models:
        _models[factory] = factory()
    return _models[factory]


def forward(model, inputs):
    with torch.no_grad():
        return model(**inputs)


@pytest.mark.parametrize(("adapter", "name"), ADAPTER_CASES, ids=[f"{a}-{n}" for a, n in ADAPTER_CASES])
def test_every_method_through_every_adapter_keeps_the_allowance(adapter, name):
    torch.set_num_threads(1)
    _, inputs_for, _, setting = ADAPTERS[adapter]
    model, inputs = model_for(adapter), inputs_for()
    budget, options = setting(name)
    with HostSyncs() as plain:
        forward(model, inputs)
    frames = {"frames": 2} if adapter == "clip-tower-video" else {}   # compress() picks TowerVideoCoding
    patch = tokencodec.compress(model, get_method(name), budget, **options, **frames)
    with patch:
        forward(model, inputs)                                  # warm-up: lazy imports and per-shape caches
        with HostSyncs() as syncs:
            forward(model, inputs)
    print(f"{adapter} × {name}: {syncs}; unpatched model: {plain.count(library=True)} library syncs")
    assert syncs.count() <= allowance(adapter, name), f"{adapter} × {name}: {syncs}"
