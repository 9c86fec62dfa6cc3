"""Tables of curves: BD metrics against an anchor, values per operating point, per group, and as a share
of the uncompressed value. One BD builder serves codecs and token methods alike; its defaults come
from the measures (see ``default_linear_rate`` and ``default_monotonic``)."""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tokencodec.rd.aggregate import item_matrix
from tokencodec.rd.bd import MIN_OVERLAP, BDOverlapWarning, BDResult, bd_quality, bd_rate
from tokencodec.rd.bootstrap import LEVEL, Interval, point_intervals
from tokencodec.rd.curve import Curve
from tokencodec.rd.measures import lookup

# Rates that are sizes of a bitstream: Bjøntegaard's log-rate axis. Every other rate (counts of tokens,
# FLOPs, KV bytes after pruning, seconds) is integrated on a linear axis.
BIT_RATES = frozenset({"bpp", "bits", "bytes"})
# Metrics of the human eye: smooth in rate, fitted as measured. Machine metrics (accuracy, agreement,
# KL, recalls…) are averages over finite test sets, noisy in rate: fitted monotonic (isotonic) first.
HUMAN_METRICS = frozenset({"psnr", "psnr-rgb", "ssim", "ssim-rgb", "ms-ssim", "ms-ssim-rgb"})

Status = str  # "ok", "low-overlap", "no-overlap" or "error: <reason>"
_ORDER = {"ok": 0, "low-overlap": 1, "no-overlap": 2}


def default_linear_rate(rate: str) -> bool:
    """Linear rate axis for counts (tokens, FLOPs, …); Bjøntegaard's log axis for bpp, bits and bytes."""
    return rate not in BIT_RATES


def default_monotonic(metric: str) -> bool:
    """Monotonic (isotonic) fits for machine metrics; none for PSNR, SSIM, MS-SSIM."""
    return metric not in HUMAN_METRICS and not metric.startswith(("psnr", "ssim", "ms-ssim"))


@dataclass(frozen=True)
class BDRow:
    test: str
    anchor: str
    metric: str
    rate: str
    method: str
    linear_rate: bool
    monotonic: bool
    bd_rate: BDResult | None       # None when the BD metrics could not be computed (``error``)
    bd_quality: BDResult | None
    error: str = ""

    @property
    def status(self) -> Status:
        """The worse of both results' statuses, or ``error: <reason>``."""
        if self.error or self.bd_rate is None or self.bd_quality is None:
            return f"error: {self.error or 'not computed'}"
        return max(self.bd_rate.status, self.bd_quality.status, key=_ORDER.__getitem__)

    @property
    def fit(self) -> str:
        return self.method + (", linear rate" if self.linear_rate else "") + (", monotonic" if self.monotonic else "")

    @property
    def noise(self) -> str:
        """"within noise" when an interval of a value shown contains 0, "beyond noise" when every shown value's
        interval excludes it, "" when no interval could be computed (no per-item values)."""
        shown = [r for r in (self.bd_rate, self.bd_quality) if r is not None and r.shown]
        if not shown or any(r.within_noise is None for r in shown):
            return ""
        return "within noise" if any(r.within_noise for r in shown) else "beyond noise"

    def to_json(self) -> dict:
        return {"test": self.test, "anchor": self.anchor, "metric": self.metric, "rate": self.rate, "fit": self.fit,
                "bd_rate": self.bd_rate.to_json() if self.bd_rate else None,
                "bd_quality": self.bd_quality.to_json() if self.bd_quality else None,
                "status": self.status, "noise": self.noise or None, "error": self.error or None}


def bd_row(anchor: Curve, test: Curve, metric: str, rate: str, *, linear_rate: bool | None = None,
           monotonic: bool | None = None, method: str = "pchip", anchor_name: str | None = None,
           test_name: str | None = None, interval: bool | int = True, seed: int = 0) -> BDRow:
    """BD-rate and BD-quality of ``test`` against ``anchor``, each with its paired-bootstrap interval when both
    curves keep per-item values (``interval=False`` skips it); a failure is a row with ``status`` "error: …"."""
    linear = default_linear_rate(rate) if linear_rate is None else linear_rate
    mono = default_monotonic(metric) if monotonic is None else monotonic
    names = (test_name or test.name, anchor_name or anchor.name)
    kw = dict(method=method, linear_rate=linear, monotonic=mono, interval=interval, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BDOverlapWarning)  # the row reports the overlap itself
        try:
            r = bd_rate(anchor, test, rate, metric, **kw)
            q = bd_quality(anchor, test, rate, metric, **kw)
        except (ValueError, KeyError) as err:  # a flat fit, a missing measure, a rate of 0 on a log axis…
            reason = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            return BDRow(*names, metric, rate, method, linear, mono, None, None, reason)
    return BDRow(*names, metric, rate, method, linear, mono, r, q)


def bd_rows(curves: Mapping[str, Curve], anchor: str, metrics: Sequence[str], rate: str, *,
            linear_rate: bool | None = None, monotonic: bool | None = None, method: str = "pchip",
            interval: bool | int = True) -> list[BDRow]:
    """One row per (curve other than the anchor, metric). Defaults: ``linear_rate`` from the rate
    (``default_linear_rate``), ``monotonic`` from the metric (``default_monotonic``). Curves that lack the
    rate are not on this axis and are left out; other failures are rows whose status says why."""
    if anchor not in curves:
        raise KeyError(f"anchor {anchor!r} is not among the curves: {', '.join(curves)}")
    rows = []
    for name, curve in curves.items():
        if name == anchor or rate not in curve.measures:
            continue
        for metric in metrics:
            rows.append(bd_row(curves[anchor], curve, metric, rate, linear_rate=linear_rate, monotonic=monotonic,
                               method=method, anchor_name=anchor, test_name=name, interval=interval))
    return rows


def bd_header(show_anchor: bool = True) -> list[str]:
    first = ["test", "anchor"] if show_anchor else ["method"]
    return [*first, "metric", "interpolation", "BD-rate (%)", "BD-quality", "overlap (quality)", "overlap (rate)",
            "status", "noise"]


def bd_value(result: BDResult | None, with_unit: bool = False) -> str:
    """A BD value with its interval, as reports print it: "−12.30 [−18.1…]"; "—" when withheld (status not ok)."""
    if result is None:
        return ""
    if not result.shown:
        return "—"
    text = result.number(result.value)
    if result.interval is not None:
        text += f" [{result.number(result.interval.low)}, {result.number(result.interval.high)}]"
    return text + (f" {result.unit}" if with_unit and result.unit and result.unit != "%" else "")


def bd_cells(row: BDRow, show_anchor: bool = True) -> list[str]:
    r, q = row.bd_rate, row.bd_quality
    first = [row.test, row.anchor] if show_anchor else [row.test]
    return [*first, row.metric, row.fit, bd_value(r), bd_value(q, with_unit=True),
            "" if r is None else f"{r.overlap:.0%}", "" if q is None else f"{q.overlap:.0%}", row.status, row.noise]


def bd_table(rows: Sequence[BDRow], show_anchor: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and cells of a BD table: BD-rate, BD-quality, both overlaps and the status of every row."""
    return bd_header(show_anchor), [bd_cells(r, show_anchor) for r in rows]


def bd_note(rate: str, linear_rate: bool | None = None) -> str:
    linear = default_linear_rate(rate) if linear_rate is None else linear_rate
    axis = "a linear" if linear else "a log"
    rate_def = (f"the mean {rate} difference at equal quality over the shared quality range, as a % of the "
                f"anchor's mean {rate} there" if linear else
                f"the average {rate} difference at equal quality over the shared quality range, in % (Bjøntegaard)")
    return (f"BD-quality: mean difference of the metric (test − anchor) over the shared range of {rate}, on {axis} "
            f"{rate} axis. BD-rate: {rate_def}; negative is better. PCHIP throughout; machine metrics "
            "(accuracies, agreements, KL, recalls, measured on finite test sets) are first fitted monotonic "
            "(isotonic regression), human metrics (PSNR, MS-SSIM) are not. Overlap: the share of the union of "
            f"both ranges that both curves cover; below {MIN_OVERLAP:.0%} the status is low-overlap and no value is "
            "printed (—), no-overlap when the ranges are disjoint. In brackets: the "
            f"{LEVEL:.0%} interval of a paired bootstrap over the items both curves share (200 resamples, seed 0); "
            "noise: within noise when an interval contains 0 (no per-item values in the files: no interval).")


def to_csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.3g}"


def with_interval(x: float, interval: Interval | None) -> str:
    """A mean and its interval, to the digits the interval supports: "0.812 [0.781, 0.843]"; a constant or a
    mean without per-item values prints as the plain value."""
    if interval is None or not math.isfinite(x) or interval.high - interval.low <= 1e-12 * max(1.0, abs(x)):
        return _fmt(x)
    half = (interval.high - interval.low) / 2
    digits = min(max(1 - math.floor(math.log10(half)), 0), 6)
    if abs(x) >= 1e5:                       # FLOPs, bytes: significant digits, not decimals
        return f"{x:.3g} [{interval.low:.3g}, {interval.high:.3g}]"
    return f"{x:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def _knob(p) -> str:
    return "" if p.knob is None else f"{p.knob:g}"


def knob_header(curves: Mapping[str, Curve]) -> str:
    """The name of the knob the curves share ("keep ratio", "quality"), or "knob" when they differ."""
    knobs = {c.knob for c in curves.values()}
    return knobs.pop().replace("_", " ") if len(knobs) == 1 and None not in knobs else "knob"


def value_table(curves: Mapping[str, Curve], columns: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Every operating point of every curve, with ``columns`` (measures) as columns; each mean with its
    bootstrap interval over items when the curve keeps per-item values (``rd.bootstrap``)."""
    header = ["method", knob_header(curves), *columns]
    rows = []
    for name, curve in curves.items():
        intervals = {c: point_intervals(curve, c) for c in columns if c not in TIMING_COLUMNS}
        for k, p in enumerate(curve.points):
            cells = []
            for c in columns:
                if c not in p.values:
                    cells.append("")
                    continue
                found = intervals.get(c)
                cells.append(with_interval(p.values[c], found[k] if found else None))
            rows.append([name, _knob(p), *cells])
    return header, rows


TIMING_COLUMNS = frozenset({"latency_s", "encoding_time", "decoding_time"})   # machine noise, not sampling noise


def _group_mean(values: np.ndarray, seed: int = 0) -> str:
    """Mean of a group's values with its bootstrap interval."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return _fmt(float(values.mean())) if len(values) else ""
    idx = np.random.default_rng(seed).integers(0, len(values), size=(1000, len(values)))
    lo, hi = np.percentile(values[idx].mean(axis=1), [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return with_interval(float(values.mean()), Interval(float(lo), float(hi), LEVEL, 1000))


def group_table(curves: Mapping[str, Curve], metric: str, group_of: Callable[[str], str | None]
                ) -> tuple[list[str], list[list[str]]]:
    """Mean ``metric`` per group of samples (from each curve's per-item values), with its bootstrap interval over
    the group's samples, one row per operating point."""
    groups = sorted({g for c in curves.values() for sid in c.per_item if (g := group_of(sid)) is not None})
    rows = []
    for name, curve in curves.items():
        found = item_matrix(curve, metric)
        for k, p in enumerate(curve.points):
            sums: dict[str, list[float]] = defaultdict(list)
            for sid, values in zip(*(found[:2] if found else ([], [])), strict=True):
                if (g := group_of(sid)) is not None:
                    sums[g].append(values[k])
            rows.append([name, _knob(p), *(_group_mean(np.array(sums[g])) if sums[g] else "" for g in groups)])
    return ["method", knob_header(curves), *groups], rows


def retention_table(curves: Mapping[str, Curve], metric: str, anchor: str
                    ) -> tuple[list[str], list[list[str]]] | None:
    """``metric`` at each keep ratio as a share of the uncompressed value (the anchor's keep-1.0 point):
    the figure behind claims such as "25 % of the tokens keep 95 % of the accuracy". ``None`` when the
    anchor has no keep-1.0 point or the metric is not higher-is-better."""
    base = curves[anchor]
    ref = next((p.values.get(metric) for p in base.points if p.knob == 1.0), None)
    measure = base.measures.get(metric) or lookup(metric)
    if not ref or not measure.higher_is_better:
        return None
    ratios = sorted({p.knob for c in curves.values() for p in c.points if p.knob is not None}, reverse=True)
    rows = []
    for name, curve in curves.items():
        at = {p.knob: p.values[metric] / ref for p in curve.points if metric in p.values}
        rows.append([name, *(f"{at[r]:.3f}" if r in at else "" for r in ratios)])
    return ["method", *(f"keep {r:g}" for r in ratios)], rows


__all__ = ["BDRow", "BIT_RATES", "HUMAN_METRICS", "bd_cells", "bd_header", "bd_note", "bd_row", "bd_rows",
           "bd_table", "bd_value", "default_linear_rate", "default_monotonic", "group_table", "knob_header",
           "retention_table", "to_csv", "value_table", "with_interval"]
