"""The human observer on video: pans over photos, video codecs through the study engine, VMAF / PSNR / SSIM."""

import pytest

pytest.importorskip("av")

from tokencodec.bench.engine import run_sweep  # noqa: E402
from tokencodec.observers import ObserverSpec, observer_for  # noqa: E402
from tokencodec.pipeline import PipelineError, PipelineSpec  # noqa: E402


def test_video_codecs_are_judged_by_vmaf_psnr_and_ssim(tmp_path):
    obs = observer_for(ObserverSpec("human-video"))
    samples = obs.samples(dataset="embedded", limit=2, size=48, frames=4)
    assert [s.image.shape for s in samples] == [(4, 48, 48, 3)] * 2
    assert samples[0].id.endswith(":right") and samples[1].id.endswith(":down")
    curves = run_sweep(obs, samples, [PipelineSpec(codec="h265", qualities=(12, 44))], tmp_path)
    fine, coarse = sorted(curves["h265"].points, key=lambda p: p.knob)
    for m in ("vmaf", "psnr-y", "ssim-y", "psnr-rgb"):
        assert fine.values[m] > coarse.values[m], m
    assert fine.values["bits"] > coarse.values["bits"] and curves["h265"].measures["vmaf"].higher_is_better
    with pytest.raises(PipelineError, match="clips"):
        PipelineSpec(codec="webp", qualities=(50,)).check(obs.runner)
