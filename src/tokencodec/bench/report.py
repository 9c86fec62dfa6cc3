"""BD tables of several curves against an anchor, as rows, Markdown and CSV."""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tokencodec.rd.bd import BDOverlapWarning, BDResult, bd_quality, bd_rate
from tokencodec.rd.curve import Curve


@dataclass(frozen=True)
class BDRow:
    test: str
    anchor: str
    metric: str
    bd_rate: BDResult
    bd_quality: BDResult


def bd_table(curves: Mapping[str, Curve], anchor: str, metrics: Sequence[str] = ("psnr-rgb", "ms-ssim-rgb"),
             rate: str = "bpp", method: str = "pchip", **options) -> list[BDRow]:
    if anchor not in curves:
        raise KeyError(f"anchor {anchor!r} is not among the curves: {', '.join(curves)}")
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BDOverlapWarning)  # the table reports the overlap itself
        for name, curve in curves.items():
            if name == anchor:
                continue
            for metric in metrics:
                rows.append(BDRow(name, anchor, metric,
                                  bd_rate(curves[anchor], curve, rate, metric, method=method, **options),
                                  bd_quality(curves[anchor], curve, rate, metric, method=method, **options)))
    return rows


_HEADER = ["test", "anchor", "metric", "method", "BD-rate (%)", "BD-quality", "overlap", "status"]


def _cells(row: BDRow) -> list[str]:
    r, q = row.bd_rate, row.bd_quality
    fmt_q = "" if q.value is None else (f"{q.value:+.4f}" if abs(q.value) < 0.1 else f"{q.value:+.3f}")
    return [row.test, row.anchor, row.metric, r.method, "" if r.value is None else f"{r.value:+.2f}",
            f"{fmt_q} {q.unit}".strip(), f"{r.overlap:.0%}", r.status]


def to_markdown(rows: Sequence[BDRow]) -> str:
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[BDRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_HEADER)
    writer.writerows(_cells(r) for r in rows)
    return buf.getvalue()
