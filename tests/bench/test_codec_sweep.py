import json

import numpy as np
import pytest

from tokencodec.bench import codec_sweep
from tokencodec.bench.codec_sweep import SweepError, plan_sweep, run_codec_sweep
from tokencodec.codecs import CODECS, CodecError
from tokencodec.codecs.jpeg import JPEG
from tokencodec.data.images import ImageItem
from tokencodec.rd import load_curve


@pytest.fixture(scope="module")
def items(photo):
    return [ImageItem("left", photo), ImageItem("flipped", np.ascontiguousarray(photo[::-1]))]


def test_sweep_writes_compressai_results_with_items_and_provenance(items, tmp_path):
    curves = run_codec_sweep(items, plan_sweep(["jpeg", "webp"], [20, 60, 90]), tmp_path)
    raw = json.loads((tmp_path / "jpeg.json").read_text())
    assert raw["name"] == "jpeg" and raw["results"]["quality"] == [20, 60, 90]
    assert set(raw["results"]) >= {"bpp", "psnr-rgb", "ms-ssim-rgb"}
    assert np.all(np.diff(raw["results"]["bpp"]) > 0) and np.all(np.diff(raw["results"]["psnr-rgb"]) > 0)
    # Per-image values, and the point value is their mean (PSNR per image, then averaged).
    per = raw["per_item"]
    assert set(per) == {"left", "flipped"}
    assert raw["results"]["psnr-rgb"][1] == pytest.approx(
        (per["left"]["psnr-rgb"][1] + per["flipped"]["psnr-rgb"][1]) / 2)
    prov = raw["provenance"]
    assert prov["tokencodec"] and prov["packages"]["pillow"] and prov["libraries"]["libjpeg-turbo"]
    assert prov["config"]["settings"] == {"subsampling": "4:2:0", "optimize": False}
    assert load_curve(tmp_path / "webp.json").column("bpp").shape == (3,)
    assert curves["jpeg"].column("psnr-rgb")[0] == pytest.approx(raw["results"]["psnr-rgb"][0])


def test_bpp_is_the_real_byte_count(items, tmp_path):
    run_codec_sweep(items[:1], plan_sweep(["jpeg"], [50]), tmp_path)
    record = json.loads((tmp_path / "points" / "jpeg.jsonl").read_text().splitlines()[0])
    h, w, _ = items[0].image.shape
    assert record["bytes"] == len(JPEG().encode(items[0].image, 50))
    assert record["bpp"] == pytest.approx(8 * record["bytes"] / (h * w))


def test_resume_computes_only_missing_points(items, tmp_path):
    seen = []
    run_codec_sweep(items, plan_sweep(["jpeg"], [30, 70]), tmp_path, on_progress=lambda d, t: seen.append(t))
    (tmp_path / "jpeg.json").unlink()
    seen.clear()
    run_codec_sweep(items, plan_sweep(["jpeg"], [30, 70]), tmp_path, on_progress=lambda d, t: seen.append(t))
    assert seen == [0]  # nothing left to compute
    assert (tmp_path / "jpeg.json").exists()
    seen.clear()
    run_codec_sweep(items, plan_sweep(["jpeg"], [30, 50, 70]), tmp_path,
                    on_progress=lambda d, t: seen.append(t))
    assert seen[0] == 2  # one task per image, for quality 50 only
    lines = (tmp_path / "points" / "jpeg.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["quality"] for x in lines) == [30, 30, 50, 50, 70, 70]


def test_a_torn_last_line_is_ignored(items, tmp_path):
    run_codec_sweep(items[:1], plan_sweep(["jpeg"], [40]), tmp_path)
    points = tmp_path / "points" / "jpeg.jsonl"
    points.write_text(points.read_text() + '{"image": "left", "quality"')
    run_codec_sweep(items[:1], plan_sweep(["jpeg", ], [40, 80]), tmp_path)
    assert len(load_curve(tmp_path / "jpeg.json").points) == 2


def test_a_failure_names_codec_image_and_quality_and_keeps_finished_points(items, tmp_path, monkeypatch):
    real_encode = JPEG._encode

    def flaky(self, image, quality):
        if quality == 80 and image[0, 0, 0] == items[1].image[0, 0, 0]:
            raise CodecError("jpeg: simulated encoder crash")
        return real_encode(self, image, quality)

    monkeypatch.setattr(JPEG, "_encode", flaky)
    with pytest.raises(SweepError, match="jpeg on image 'flipped' at quality 80"):
        run_codec_sweep(items, plan_sweep(["jpeg"], [40, 80]), tmp_path)
    kept = [json.loads(x) for x in (tmp_path / "points" / "jpeg.jsonl").read_text().splitlines()]
    assert {(r["image"], r["quality"]) for r in kept} == {("left", 40), ("left", 80)}
    monkeypatch.setattr(JPEG, "_encode", real_encode)
    seen = []
    run_codec_sweep(items, plan_sweep(["jpeg"], [40, 80]), tmp_path, on_progress=lambda d, t: seen.append(t))
    assert seen[0] == 1  # only the failed image is coded again


def test_plan_refuses_bad_qualities_before_any_work():
    with pytest.raises(CodecError, match=r"jpeg2000: quality 5 is outside the allowed range \[15, 60\]"):
        plan_sweep(["jpeg", "jpeg2000"], [5, 30])
    assert "jpeg2000" in CODECS


def test_parallel_matches_serial(items, tmp_path):
    plans = plan_sweep(["jpeg", "webp"], [25, 75])
    serial = run_codec_sweep(items, plans, tmp_path / "serial", workers=1)
    parallel = run_codec_sweep(items, plans, tmp_path / "parallel", workers=2)
    for name in ("jpeg", "webp"):
        for m in ("bpp", "psnr-rgb", "ms-ssim-rgb"):
            assert np.array_equal(serial[name].column(m), parallel[name].column(m))
    assert codec_sweep.settings_id("jpeg") == codec_sweep.settings_id("jpeg")
