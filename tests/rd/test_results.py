import json
from pathlib import Path

import pytest

from tokencodec.rd import Curve, ResultsFileError, bd_rate, load_curve, save_curve
from tokencodec.rd.measures import KNOWN

# The layout CompressAI's eval_model writes (values from a learned codec on Kodak, abridged).
COMPRESSAI = {
    "name": "bmshj2018-factorized",
    "description": "Inference (ans)",
    "results": {
        "psnr-rgb": [27.2, 28.9, 30.6, 32.4, 34.3, 36.3],
        "ms-ssim-rgb": [0.925, 0.946, 0.962, 0.974, 0.983, 0.989],
        "bpp": [0.12, 0.19, 0.29, 0.44, 0.65, 0.95],
        "encoding_time": [0.02] * 6,
        "decoding_time": [0.02] * 6,
    },
}


def test_round_trip_keeps_measures_knob_items_and_provenance(tmp_path):
    curve = Curve.from_columns("jpeg", {"quality": [10, 50], "bpp": [0.5, 1.5], "psnr-rgb": [28.0, 34.0]},
                               knob="quality", per_item={"img": {"bpp": [0.5, 1.5]}},
                               provenance={"tokencodec": "x"})
    path = save_curve(curve, tmp_path / "jpeg.json")
    raw = json.loads(path.read_text())
    assert set(raw) >= {"name", "description", "results"}
    assert raw["results"]["bpp"] == [0.5, 1.5] and raw["results"]["quality"] == [10, 50]
    assert raw["measures"]["psnr-rgb"] == {"unit": "dB", "higher_is_better": True, "kind": "distortion",
                                           "description": KNOWN["psnr-rgb"].description}
    back = load_curve(path)
    assert back.knob == "quality" and [p.knob for p in back.points] == [10, 50]
    assert back.per_item == {"img": {"bpp": [0.5, 1.5]}} and back.provenance == {"tokencodec": "x"}
    assert list(tmp_path.iterdir()) == [path]  # the atomic write left no temporary file


def test_compressai_files_are_read_unchanged(tmp_path):
    path = tmp_path / "bmshj.json"
    path.write_text(json.dumps(COMPRESSAI))
    curve = load_curve(path)
    assert curve.name == "bmshj2018-factorized"
    assert curve.measures["bpp"].kind == "rate" and curve.measures["psnr-rgb"].higher_is_better
    anchor = Curve.from_columns("anchor", {"bpp": [b * 2 for b in COMPRESSAI["results"]["bpp"]],
                                           "psnr-rgb": COMPRESSAI["results"]["psnr-rgb"]})
    assert bd_rate(anchor, curve).value == pytest.approx(-50.0)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ('{"name": "x"}', "not a results file"),
    ('{"results": {"bpp": [1, 2], "psnr-rgb": [1]}}', "different lengths"),
])
def test_bad_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ResultsFileError, match=message) as err:
        load_curve(path)
    assert "bad.json" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ResultsFileError, match="not found"):
        load_curve(tmp_path / "nope.json")


@pytest.mark.filterwarnings("ignore::tokencodec.rd.bd.BDOverlapWarning")
def test_files_in_either_order_load_and_compare_alike(tmp_path):
    # new files list points from the lowest rate up (CompressAI's order); older ones went from the highest down
    shipped = Path(__file__).resolve().parents[2] / "docs/studies/pixels-for-machines/humans"
    old = json.loads((shipped / "webp.json").read_text())
    assert old["results"]["quality"][0] > old["results"]["quality"][-1]        # an old, descending file
    flipped = {**old, "results": {k: v[::-1] for k, v in old["results"].items()},
               "per_item": {i: {m: v[::-1] for m, v in values.items()} for i, values in old["per_item"].items()}}
    (tmp_path / "webp.json").write_text(json.dumps(flipped))
    jpeg = load_curve(shipped / "jpeg.json")
    a, b = bd_rate(jpeg, load_curve(shipped / "webp.json")), bd_rate(jpeg, load_curve(tmp_path / "webp.json"))
    assert a.value == pytest.approx(b.value) and a.status == b.status
