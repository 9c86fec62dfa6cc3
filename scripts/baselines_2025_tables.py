"""The tables of docs/studies/baselines-2025/README.md, from the study's results files (which must keep per_item).

    python scripts/baselines_2025_tables.py docs/studies/baselines-2025/diagnostic --metric accuracy \\
        --methods cdpruner-llm-input vispruner flowcut visionzip divprune random --keeps 0.25 0.125 \\
        --versus divprune visionzip

Prints, as markdown: (1) the metric per method and keep ratio with its 95 % percentile-bootstrap interval
over items (and the tokens and FLOPs of the point); (2) the metric per group (question type) at ``--keeps``;
(3) paired differences (method − reference, the same items) at ``--keeps`` with a 95 % paired-bootstrap
interval, for each ``--versus`` reference. Bootstrap: 2000 resamples, seed 0.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

RESAMPLES, SEED = 2000, 0


def load(folder: Path, label: str) -> dict:
    data = json.loads((folder / f"{label}.json").read_text())
    if not data.get("per_item"):
        raise SystemExit(f"{folder / label}.json keeps no per_item values; run the study again")
    return data


def column(data: dict, keep: float) -> int:
    keeps = data["results"]["keep_ratio"]
    if keep not in keeps:
        raise SystemExit(f"{data['name']}: no point at keep {keep} (it has {keeps})")
    return keeps.index(keep)


def values(data: dict, metric: str, keep: float) -> tuple[list[str], np.ndarray]:
    i = column(data, keep)
    items = sorted(data["per_item"])
    return items, np.array([data["per_item"][k][metric][i] for k in items], dtype=float)


def interval(x: np.ndarray) -> tuple[float, float]:
    idx = np.random.default_rng(SEED).integers(0, len(x), (RESAMPLES, len(x)))
    means = x[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def cell(x: np.ndarray) -> str:
    lo, hi = interval(x)
    return f"{x.mean():.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--metric", default="accuracy")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--keeps", nargs="+", type=float, default=[0.25, 0.125])
    ap.add_argument("--all-keeps", nargs="+", type=float, default=[1.0, 0.5, 0.25, 0.125, 0.0625])
    ap.add_argument("--versus", nargs="*", default=[])
    a = ap.parse_args()
    runs = {m: load(a.folder, m) for m in a.methods}

    print(f"### {a.metric} per keep ratio (tokens · GFLOPs in brackets)\n")
    print("| method | " + " | ".join(f"keep {k:g}" for k in a.all_keeps) + " |")
    print("|---|" + "---|" * len(a.all_keeps))
    for m, data in runs.items():
        row = []
        for k in a.all_keeps:
            if k not in data["results"]["keep_ratio"]:
                row.append("")
                continue
            i = column(data, k)
            r = data["results"]
            _, x = values(data, a.metric, k)
            row.append(f"{cell(x)} ({r['tokens'][i]:g} · {r['flops'][i] / 1e9:.3g})")
        print(f"| {m} | " + " | ".join(row) + " |")

    groups = sorted({k.rsplit("/", 1)[-1] for k in next(iter(runs.values()))["per_item"]})
    for k in a.keeps:
        print(f"\n### {a.metric} per group at keep {k:g}\n")
        print("| method | " + " | ".join(groups) + " | all |")
        print("|---|" + "---|" * (len(groups) + 1))
        for m, data in runs.items():
            items, x = values(data, a.metric, k)
            by = defaultdict(list)
            for item, v in zip(items, x, strict=True):
                by[item.rsplit("/", 1)[-1]].append(v)
            print(f"| {m} | " + " | ".join(f"{np.mean(by[g]):.2f}" for g in groups) + f" | {x.mean():.3f} |")

    for ref in a.versus:
        print(f"\n### {a.metric}: method − {ref} on the same items (95 % paired bootstrap)\n")
        print("| method | " + " | ".join(f"keep {k:g}" for k in a.keeps) + " |")
        print("|---|" + "---|" * len(a.keeps))
        base = load(a.folder, ref)
        for m, data in runs.items():
            if m == ref:
                continue
            row = []
            for k in a.keeps:
                items, x = values(data, a.metric, k)
                items_r, y = values(base, a.metric, k)
                if items != items_r:
                    raise SystemExit(f"{m} and {ref} were measured on different items")
                d = x - y
                lo, hi = interval(d)
                mark = "" if lo <= 0 <= hi else " *"
                row.append(f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]{mark}")
            print(f"| {m} | " + " | ".join(row) + " |")
        print("\n\\* the interval excludes 0.")


if __name__ == "__main__":
    main()
