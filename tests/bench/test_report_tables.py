"""Per-group and share-of-uncompressed tables computed from curves the engine made."""

import pytest

from tokencodec.bench.engine import run_sweep
from tokencodec.bench.report.tables import group_table, retention_table
from tokencodec.pipeline import PipelineSpec

from .linear_observer import LinearObserver


def _parity(sample_id: str) -> str:
    return "even" if int(sample_id[1:]) % 2 == 0 else "odd"


def test_group_table_averages_per_item_values_within_each_group(tmp_path):
    obs = LinearObserver()
    curves = run_sweep(obs, obs.samples(n=4), [PipelineSpec(method="random", keep_ratios=(1.0, 0.25))], tmp_path)
    header, rows = group_table(curves, "kl", _parity)
    assert header[2:] == ["even", "odd"]
    items = curves["random"].per_item
    for k, row in enumerate(rows):
        assert row[:2] == ["random", ["1", "0.25"][k]]
        even = (items["s0"]["kl"][k] + items["s2"]["kl"][k]) / 2
        odd = (items["s1"]["kl"][k] + items["s3"]["kl"][k]) / 2
        assert float(row[2]) == pytest.approx(even, abs=1e-3) and float(row[3]) == pytest.approx(odd, abs=1e-3)
    assert float(rows[1][2]) > 0  # pruning to 25 % changes the output: the table is not a copy of the full point


def test_retention_table_divides_by_the_uncompressed_value(tmp_path):
    obs = LinearObserver()
    specs = [PipelineSpec(method=m, keep_ratios=(1.0, 0.25)) for m in ("random", "divprune")]
    curves = run_sweep(obs, obs.samples(n=4), specs, tmp_path)
    header, rows = retention_table(curves, "agreement", "random")
    assert header == ["method", "keep 1", "keep 0.25"]
    full = curves["random"].points[0]["agreement"]
    assert rows[1] == ["divprune", f"{curves['divprune'].points[0]['agreement'] / full:.3f}",
                       f"{curves['divprune'].points[1]['agreement'] / full:.3f}"]
    assert retention_table(curves, "kl", "random") is None  # lower is better: no share of it is "kept"
