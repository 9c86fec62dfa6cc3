"""Video observers: the diagnostic video MLLM (shipped fine-tuned weights) and the Fashion-MNIST ViT on
camera pans (a reconstructing receiver); camera-motion clips; TowerVideoCoding against a hand-run receiver."""

import numpy as np
import pytest
import torch

from tokencodec.adapters.vision_tower import TowerVideoCoding
from tokencodec.bench.engine import SweepError, run_sweep
from tokencodec.data.camera_motion import pan, shift
from tokencodec.models.fashion_vit import FashionViT, preprocess
from tokencodec.observers import ObserverSpec, observer_for
from tokencodec.pipeline import PipelineError, PipelineSpec
from tokencodec.tokens.compress import Budget, get_method


def test_pan_moves_the_content_step_pixels_per_frame():
    img = np.arange(36, dtype=np.uint8).reshape(6, 6)
    clip = pan(img, 3, 2, "down")
    assert clip.shape == (3, 6, 6) and np.array_equal(clip[1], img)          # the middle frame is the photo
    assert np.array_equal(clip[2][2:], img[:4]) and not clip[2][:2].any()   # moved down, black above
    assert np.array_equal(clip[0], shift(img, -2, 0))
    with pytest.raises(ValueError, match="unknown pan direction 'sideways'"):
        pan(img, 3, 2, "sideways")


def test_diagnostic_video_model_answers_and_temporal_keeps_its_accuracy(tmp_path):
    obs = observer_for(ObserverSpec("diagnostic-video"))
    samples = obs.samples(split="test", n=60)
    assert samples[0].image.shape == (4, 64, 64, 3) and {obs.group(s.id) for s in samples} == {"direction",
                                                                                               "mover_colour"}
    curves = run_sweep(obs, samples, [PipelineSpec(method="temporal", keep_ratios=(1.0, 0.265625)),
                                      PipelineSpec(method="uniform-frames", keep_ratios=(0.25,)),
                                      PipelineSpec(method="divprune", keep_ratios=(0.125,))], tmp_path)
    coded, full = curves["temporal"].points                   # ascending rate
    assert full["tokens"] == 256 and full["agreement"] == 1.0
    assert full["accuracy"] >= 0.9                                  # the shipped model reads motion
    assert coded["tokens"] == 68 and coded["accuracy"] >= full["accuracy"] - 0.1    # 98 % on 400 test videos
    one_frame = curves["uniform-frames"].points[0]
    assert one_frame["tokens"] == 64
    assert one_frame["accuracy"] < coded["accuracy"] - 0.2          # one frame cannot show motion
    assert curves["divprune"].points[0]["tokens"] == 32             # 8 per frame


def test_video_observers_refuse_what_they_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="spatial='diagonal'"):
        ObserverSpec("diagnostic-video", {"spatial": "diagonal"}).build()
    obs = observer_for(ObserverSpec("diagnostic-video"))
    with pytest.raises(SweepError, match=r"every key-frame token: K ≥ 64 for 4 frames .* got K=32"):
        run_sweep(obs, obs.samples(split="test", n=1), [PipelineSpec(method="temporal", keep_ratios=(0.125,))],
                  tmp_path)
    with pytest.raises(PipelineError, match="stage 'vision-encoder'"):
        run_sweep(obs, obs.samples(split="test", n=1), [PipelineSpec(method="tome", keep_ratios=(0.5,))], tmp_path)


def test_tower_video_coding_runs_the_later_layers_on_the_rebuilt_frames(random_vit):
    model = FashionViT.from_pretrained(random_vit, attn_implementation="eager")
    img = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    x = preprocess(pan(img, 2, 2, "right"))                                      # 2 frames
    method = get_method("temporal")
    with torch.no_grad(), TowerVideoCoding(model, method, Budget(keep=196 + 30), layer=1, frames=2) as patch:
        got = model(x)
    assert int(patch.sent[0]) == 226 and patch.tokens_per_layer == [197] * 4
    tower = model.vision_tower
    with torch.no_grad():
        h = tower.pre_layrnorm(tower.embeddings(x))
        for layer in tower.encoder.layers[:2]:
            h = layer(h, None)
        recon = patch.last_batch.context["temporal_reconstruction"].reshape(2, 196, -1)
        assert torch.allclose(recon[0], h[0, 1:])                                 # the key frame arrives whole
        sent = patch.last_batch.positions[0, 196:] - 196                          # frame-1 cells that were sent
        assert torch.allclose(recon[1, sent], h[1, 1 + sent])
        h = torch.cat([h[:, :1], recon], 1)
        for layer in tower.encoder.layers[2:]:
            h = layer(h, None)
        want = model.head(tower.post_layernorm(h[:, 0]))
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="not a video method"):
        TowerVideoCoding(model, "divprune", 8, layer=1, frames=2)


def test_fashion_video_observer_counts_what_each_method_sends(random_vit, tmp_path):
    obs = observer_for(ObserverSpec("fashion-vit-video", {"weights": str(random_vit)}))
    samples = obs.samples(split="test", limit=3, frames=4)
    assert samples[0].image.shape == (4, 28, 28, 3) and samples[0].id.split("/")[2] in {"left", "right", "up", "down"}
    curves = run_sweep(obs, samples, [PipelineSpec(method="temporal", keep_ratios=(1.0, 0.25)),
                                      PipelineSpec(method="uniform-frames", keep_ratios=(0.5,)),
                                      PipelineSpec(method="divprune", keep_ratios=(0.25,))], tmp_path)
    key_only, full = curves["temporal"].points                # ascending rate
    assert full["tokens"] == 197 and full["top1_agreement"] == 1.0 and full["kl"] == pytest.approx(0.0, abs=1e-5)
    assert key_only["tokens"] == (196 + 4) / 4 and key_only["flops"] == full["flops"]   # bits saved, not compute
    half = curves["uniform-frames"].points[0]
    assert half["tokens"] == 2 * 197 / 4 and half["flops"] == pytest.approx(full["flops"] / 2)
    spatial = curves["divprune"].points[0]
    assert spatial["tokens"] == 49 + 1 and spatial["flops"] < full["flops"]


def test_image_observers_refuse_video_methods():
    from tokencodec.observers import OBSERVERS
    from tokencodec.tokens.compress import METHODS

    for name in ("diagnostic-mllm", "efficientnet-lite0", "fashion-vit"):
        why = OBSERVERS.get(name).method_support(METHODS.get("temporal"))
        assert why and "codes video" in why, name
    assert OBSERVERS.get("fashion-vit-video").method_support(METHODS.get("uniform-frames")) is None
    assert "stage 'llm'" in OBSERVERS.get("fashion-vit-video").method_support(METHODS.get("fastv"))
