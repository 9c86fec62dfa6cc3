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
        assert row[:2] == ["random", ["0.25", "1"][k]]
        even = (items["s0"]["kl"][k] + items["s2"]["kl"][k]) / 2
        odd = (items["s1"]["kl"][k] + items["s3"]["kl"][k]) / 2
        mean = [float(cell.split(" [")[0]) for cell in row[2:]]          # "mean [low, high]": its interval follows
        assert mean[0] == pytest.approx(even, abs=1e-3) and mean[1] == pytest.approx(odd, abs=1e-3)
    assert float(rows[0][2].split(" [")[0]) > 0  # pruning to 25 % changes the output: not a copy of the full point
    assert "[" in rows[0][2]                      # two samples per group at 25 %: a bootstrap interval


def test_retention_table_divides_by_the_uncompressed_value(tmp_path):
    obs = LinearObserver()
    specs = [PipelineSpec(method=m, keep_ratios=(1.0, 0.25)) for m in ("random", "divprune")]
    curves = run_sweep(obs, obs.samples(n=4), specs, tmp_path)
    header, rows = retention_table(curves, "agreement", "random")
    assert header == ["method", "keep 1", "keep 0.25"]
    full = curves["random"].points[1]["agreement"]
    assert rows[1] == ["divprune", f"{curves['divprune'].points[1]['agreement'] / full:.3f}",
                       f"{curves['divprune'].points[0]['agreement'] / full:.3f}"]
    assert retention_table(curves, "kl", "random") is None  # lower is better: no share of it is "kept"
