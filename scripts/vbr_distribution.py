"""Per-image token counts of a results file (e.g. rdo's VBR): quantiles per knob and the mean per group.

    python scripts/vbr_distribution.py results/studies/fashion-vit/rdo-vbr.json

Prints a Markdown table per knob value: mean, min, 10/50/90 % quantiles and max of the tokens each image
kept, then the mean per group (the last component of the sample ids: a class or question type).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("--rate", default="tokens")
    args = p.parse_args(argv)
    d = json.loads(open(args.results, encoding="utf-8").read())
    knobs = d["results"][d["knob"]]
    items = d["per_item"]
    counts = np.array([items[k][args.rate] for k in items])           # [images, knobs]
    print(f"| {d['knob']} | mean | min | p10 | median | p90 | max |\n|---|---|---|---|---|---|---|")
    for j, knob in enumerate(knobs):
        c = counts[:, j]
        q = np.quantile(c, [0.1, 0.5, 0.9])
        print(f"| {knob:g} | {c.mean():.1f} | {c.min():g} | {q[0]:g} | {q[1]:g} | {q[2]:g} | {c.max():g} |")
    groups = defaultdict(list)
    for k, row in zip(items, counts, strict=True):
        groups[k.rsplit("/", 1)[-1]].append(row)
    print("\n| group | images | " + " | ".join(f"{d['knob']} {k:g}" for k in knobs) + " |")
    print("|---|---|" + "---|" * len(knobs))
    for g in sorted(groups, key=lambda g: -np.mean(groups[g], axis=0)[-1]):
        rows = np.array(groups[g])
        print(f"| {g} | {len(rows)} | " + " | ".join(f"{v:.1f}" for v in rows.mean(0)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
