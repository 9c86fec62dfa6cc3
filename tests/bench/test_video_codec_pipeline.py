"""Video codecs as pipeline modules: a clip is coded whole, bpp counts every pixel of every frame, and a
codec meant for the other kind of observer is refused before any work."""

import pytest

pytest.importorskip("av")

from tokencodec.bench.engine import run_sweep  # noqa: E402
from tokencodec.observers import ObserverSpec, observer_for  # noqa: E402
from tokencodec.pipeline import PipelineError, PipelineSpec  # noqa: E402


def test_a_video_codec_codes_the_whole_clip_for_a_video_observer(tmp_path):
    obs = observer_for(ObserverSpec("diagnostic-video"))
    samples = obs.samples(split="test", n=3, frames=4)
    spec = PipelineSpec(codec="h264", qualities=(10, 45))
    fine, coarse = sorted(run_sweep(obs, samples, [spec], tmp_path)["h264"].points, key=lambda p: p.knob)
    t, h, w, _ = samples[0].image.shape
    assert fine.values["bpp"] == pytest.approx(fine.values["bits"] / (t * h * w))
    assert coarse.values["bits"] < fine.values["bits"]
    assert fine.values["accuracy"] >= coarse.values["accuracy"]


def test_codecs_of_the_wrong_kind_are_refused():
    video = observer_for(ObserverSpec("diagnostic-video")).runner
    image = observer_for(ObserverSpec("diagnostic-mllm")).runner
    with pytest.raises(PipelineError, match="single images"):
        PipelineSpec(codec="av1", qualities=(30,)).check(image)
    with pytest.raises(PipelineError, match="clips"):
        PipelineSpec(codec="jpeg", qualities=(30,)).check(video)
    with pytest.raises(PipelineError, match="video: .*h264"):
        PipelineSpec(codec="vp9", qualities=(30,)).check()
    with pytest.raises(PipelineError, match="CRF|range"):
        PipelineSpec(codec="h265", qualities=(60,)).check()
