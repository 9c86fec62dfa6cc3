"""Summarise the pixels-for-machines studies: do codec rankings change when the observer is a machine?

    TOKENCODEC_KODAK=../shared/data/kodak tokencodec study studies/pixels-for-humans.yaml -j 2 --executor process
    TOKENCODEC_KODAK=../shared/data/kodak tokencodec study studies/pixels-for-machines-efficientnet.yaml \
        -j 2 --executor process
    tokencodec study studies/pixels-for-machines-diagnostic.yaml -j 2 --executor process
    python scripts/pixels_for_machines.py            # → docs/studies/pixels-for-machines/

Reads the three results folders (results/studies/<name>/), writes each study's report and results
files beside the summary, and a BD table against JPEG per observer and metric (rate: bits per pixel
of the whole file; for the 64×64 VQA images also the payload alone, container and tables left out).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tokencodec.bench.report import write_report
from tokencodec.bench.report.tables import bd_rows, bd_value
from tokencodec.io import write_json_atomic, write_text_atomic
from tokencodec.rd import load_curve

CODECS = ("jpeg", "webp", "avif", "jpeg2000", "jpegxl", "heic")
STUDIES = {  # name → (metrics, rates)
    "pixels-for-humans": (("psnr-rgb", "ms-ssim-rgb"), ("bpp",)),
    "pixels-for-machines-efficientnet": (("top1_agreement", "top5_agreement", "kl"), ("bpp",)),
    "pixels-for-machines-diagnostic": (("accuracy", "agreement"), ("bpp", "payload_bpp")),
}


def _cell(row) -> str:
    """BD-rate with its interval, or why there is none (the status rule: no number below 75 % overlap)."""
    r = row.bd_rate
    if r is None or not r.shown:
        return f"— ({row.status}{f', {r.overlap:.0%}' if r is not None and r.value is not None else ''})"
    return f"{bd_value(r)} %" + (" (within noise)" if r.within_noise else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results/studies"))
    parser.add_argument("--out", type=Path, default=Path("docs/studies/pixels-for-machines"))
    args = parser.parse_args()

    curves = {}
    for name, (metrics, rates) in STUDIES.items():
        folder = args.results / name
        curves[name] = {c: load_curve(folder / f"{c}.json") for c in CODECS}
        dest = args.out / name.replace("pixels-for-", "")
        dest.mkdir(parents=True, exist_ok=True)
        for c in CODECS:
            raw = json.loads((folder / f"{c}.json").read_text())
            if len(raw.get("per_item", {})) > 100:  # 700 VQA questions: megabytes of per-question values
                raw["per_item"] = {}
                raw["description"] += " (per_item left out of this copy; the study command writes it)"
            write_json_atomic(dest / f"{c}.json", raw)
        write_report(curves[name], dest, f"Study: {name}", "jpeg", list(metrics), rates=list(rates),
                     description=curves[name]["jpeg"].provenance["config"]["study"]["description"])

    lines = ["| observer | metric | rate | " + " | ".join(CODECS[1:]) + " |", "|---|---|---|" + "---|" * 5]
    for name, (metrics, rates) in STUDIES.items():
        for rate in rates:
            for metric in metrics:
                rows = {r.test: r for r in bd_rows(curves[name], "jpeg", [metric], rate)}
                lines.append(f"| {name.replace('pixels-for-', '')} | {metric} | {rate} | "
                             + " | ".join(_cell(rows[c]) for c in CODECS[1:]) + " |")
    diag = curves["pixels-for-machines-diagnostic"]
    head = ["| codec | quality | mean bytes | mean payload bytes | container + tables | share |",
            "|---|---|---|---|---|---|"]
    for c in CODECS:
        curve = diag[c]
        p = curve.points[len(curve.points) // 2]
        total, payload = p["bytes"], p["payload_bytes"]
        head.append(f"| {c} | {p.knob:g} | {total:.0f} | {payload:.0f} | {total - payload:.0f} | "
                    f"{(total - payload) / total:.0%} |")
    overhead = {c: statistics.mean(p["bytes"] - p["payload_bytes"] for p in diag[c].points) for c in CODECS}
    text = "\n".join([
        "## BD-rate against JPEG (PCHIP; negative = fewer bits for the same fidelity)", "",
        "In brackets after a value: its 95 % paired-bootstrap interval over the items (where the files keep "
        "per-item values). No value is given below 75 % overlap of the metric range (low-overlap, the overlap in "
        "brackets). Machine metrics are fitted monotonic first (isotonic), PSNR and MS-SSIM are not.", "",
        *lines, "", "## What container headers cost at 64×64 (diagnostic VQA images, middle quality)", "",
        *head, "", "Mean overhead over all ten qualities (bytes): "
        + ", ".join(f"{c} {v:.0f}" for c, v in overhead.items()) + ".", ""])
    write_text_atomic(args.out / "summary.md", text)
    print(text)


if __name__ == "__main__":
    main()
