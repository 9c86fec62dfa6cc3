"""Run every study file on a few samples and record its numbers, to show a refactor changed none of them.

    python scripts/study_numbers.py --limit 4 --out before.json           # on the old commit
    python scripts/study_numbers.py --limit 4 --compare before.json       # on the new one: exit 1 on a difference

Every measure of every point is recorded except timings and memory (they differ run to run), so
accuracies, agreements, token counts, FLOPs and bits are all compared. Study files that need a model
hub (``hf-mllm``) are skipped. Kodak comes from ``$TOKENCODEC_KODAK`` (a folder) as everywhere.
A rate that did not exist before (a new column) is listed, not counted as a difference.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

SKIP_OBSERVERS = {"hf-mllm"}                                  # needs a hub checkpoint
UNSTABLE = {"latency_s", "encoding_time", "decoding_time", "peak_bytes", "latency_pred_s"}


def study_numbers(path: Path, limit: int) -> dict:
    from tokencodec.bench.study import load_study, run_study

    study = load_study(path)
    with tempfile.TemporaryDirectory() as out:
        result = run_study(study, out, data_overrides={"limit": limit}, write_report=False)
    curves = {}
    for label, curve in sorted(result["curves"].items()):
        points = {}
        for point in curve.points:
            knob = json.dumps(point.knob) if not isinstance(point.knob, str) else point.knob
            points[knob] = {k: float(v) for k, v in sorted(point.values.items()) if k not in UNSTABLE}
        curves[label] = points
    return curves


def differences(before: dict, after: dict, rel: float = 1e-9) -> tuple[list[str], list[str]]:
    """(differences, new columns) between two records of the same studies."""
    diffs, new = [], []
    for study, curves in before.items():
        for label, points in curves.items():
            for knob, values in points.items():
                now = after.get(study, {}).get(label, {}).get(knob)
                if now is None:
                    diffs.append(f"{study}: {label} @ {knob}: missing after")
                    continue
                for k, v in values.items():
                    if k not in now:
                        diffs.append(f"{study}: {label} @ {knob}: {k} missing after")
                    elif not math.isclose(v, now[k], rel_tol=rel, abs_tol=1e-12):
                        diffs.append(f"{study}: {label} @ {knob}: {k} {v!r} → {now[k]!r}")
                new += [f"{study}: {label}: {k}" for k in now if k not in values]
    return diffs, sorted(set(new))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="*", type=Path, help="study files (default: studies/*.yaml)")
    parser.add_argument("--limit", type=int, default=4, help="samples per study (default 4)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON")
    parser.add_argument("--compare", type=Path, help="compare with numbers written earlier; exit 1 on a difference")
    args = parser.parse_args(argv)
    import torch
    import yaml

    torch.set_num_threads(1)
    paths = args.studies or sorted(Path("studies").glob("*.yaml"))
    numbers = {}
    for path in paths:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        observer = raw["observer"]["name"] if isinstance(raw["observer"], dict) else raw["observer"]
        if observer in SKIP_OBSERVERS:
            print(f"skip {path.name} (observer {observer} needs a model hub)", file=sys.stderr)
            continue
        print(f"run {path.name}", file=sys.stderr)
        numbers[path.stem] = study_numbers(path, args.limit)
    if args.out:
        args.out.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if args.compare:
        before = json.loads(args.compare.read_text(encoding="utf-8"))
        before = {k: v for k, v in before.items() if k in numbers}
        diffs, new = differences(before, numbers)
        for line in new:
            print(f"new column: {line}")
        for line in diffs:
            print(f"DIFFERENT: {line}")
        points = sum(len(p) for c in before.values() for p in c.values())
        print(f"{len(before)} studies, {points} points compared: {len(diffs)} differences")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
