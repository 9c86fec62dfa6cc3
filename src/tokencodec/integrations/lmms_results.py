"""lmms-eval runs → tokencodec curves: join lmms-eval's results files with the plugin's cost records.

Needs no lmms-eval install (only the files): each ``*_results.json`` lmms-eval writes holds the
task metrics and the ``model_args`` string; the plugin wrote ``<costs>/<run id>.jsonl`` for the
same arguments (the id is :func:`run_id` of :func:`run_config`, computed the same way here). One
run becomes one operating point: the task metric against the mean per-sample rates.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from tokencodec.rd.curve import Curve
from tokencodec.rd.measures import Measure

RATES = ("tokens", "tokens_avg_layers", "flops", "latency_s", "peak_bytes")


class LmmsResultsError(ValueError):
    """A results or cost file that cannot be joined; the message names it."""


def run_config(pretrained, method="none", keep=None, ratio=None, r=None, seed=0, dtype="auto",
               max_new_tokens=None, options=None) -> dict:
    """A run's identifying arguments as strings (so "64", 64 and 64.0, or "0.50" and 0.5, agree)."""
    return {"pretrained": str(pretrained), "method": text(method) or "none", "keep": text(keep),
            "ratio": text(ratio), "r": text(r), "seed": text(seed), "dtype": str(dtype),
            "max_new_tokens": text(max_new_tokens),
            "options": {k: text(v) for k, v in sorted((options or {}).items())}}


def text(value) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or str(value).lower() in ("true", "false"):
        return str(value).lower()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else repr(number)


def run_id(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def parse_model_args(text: str) -> dict:
    """``pretrained=x,method=y,keep=64,opt_layer=2`` → run_config(...) (the keys the plugin identifies runs by)."""
    args = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    options = {k[4:]: v for k, v in args.items() if k.startswith("opt_")}
    known = ("pretrained", "method", "keep", "ratio", "r", "seed", "dtype", "max_new_tokens")
    if "pretrained" not in args:
        raise LmmsResultsError(f"model_args {text!r} have no pretrained=")
    return run_config(**{k: args[k] for k in known if k in args}, options=options)


def read_costs(path: Path) -> list[tuple[dict, list[dict]]]:
    """The sessions of a cost file, oldest first: (header, per-sample records) for each time the plugin ran
    with these arguments (it appends); a torn last line is dropped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    sessions: list[tuple[dict, list[dict]]] = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise LmmsResultsError(f"{path}: line {i + 1} is not JSON") from None
            continue
        if "config" in record:
            sessions.append((record, []))
        elif not sessions:
            raise LmmsResultsError(f"{path}: not a tokencodec cost file (no header line)")
        else:
            sessions[-1][1].append(record)
    if not sessions:
        raise LmmsResultsError(f"{path}: not a tokencodec cost file (no header line)")
    return sessions


def matching_session(path: Path, task: str, n_samples: int | None) -> tuple[dict, list[dict]]:
    """The latest session of a cost file with ``n_samples`` records of ``task`` (any count when None)."""
    sessions = [(h, [s for s in samples if s.get("task") == task]) for h, samples in read_costs(path)]
    fits = [(h, s) for h, s in sessions if s and (n_samples is None or len(s) == n_samples)]
    if not fits:
        counts = [len(s) for _, s in sessions]
        raise LmmsResultsError(f"{path}: no session with {n_samples} samples of task {task!r} (sessions hold "
                               f"{counts}); was the results file made by another run (--limit, --offset)?")
    return fits[-1]


def curve_from_runs(results: list[Path], costs: Path, task: str, metric: str, name: str,
                    higher_is_better: bool = True) -> Curve:
    """One point per lmms-eval results file: ``metric`` of ``task`` against the run's mean rates."""
    points: dict[str, list] = {"knob": [], metric: [], **{r: [] for r in RATES}}
    runs, seen = [], {}
    for path in sorted(Path(p) for p in results):
        data = json.loads(path.read_text(encoding="utf-8"))
        args = (data.get("config") or {}).get("model_args")
        if not isinstance(args, str):
            raise LmmsResultsError(f"{path}: no config.model_args (is it an lmms-eval results file?)")
        if task not in data.get("results", {}):
            raise LmmsResultsError(f"{path}: no results for task {task!r}; it has {sorted(data.get('results', {}))}")
        scores = data["results"][task]
        key = next((k for k in (metric, f"{metric},none") if k in scores), None)
        if key is None:
            raise LmmsResultsError(f"{path}: task {task!r} has no metric {metric!r}; it has {sorted(scores)}")
        config = parse_model_args(args)
        rid = run_id(config)
        if rid in seen:
            raise LmmsResultsError(f"{path} and {seen[rid]} are runs of the same model_args; keep one (a curve "
                                   "has one point per configuration)")
        seen[rid] = path
        cost_file = Path(costs) / f"{rid}.jsonl"
        if not cost_file.is_file():
            raise LmmsResultsError(f"{path}: no cost records for its model_args in {cost_file} (run with "
                                   f"--model tokencodec and costs={costs})")
        effective = ((data.get("n-samples") or {}).get(task) or {}).get("effective")
        head, samples = matching_session(cost_file, task, effective)
        for r in RATES:
            points[r].append(float(np.mean([s[r] for s in samples])))
        # the knob: the budget given; for the uncompressed run, the visual tokens it saw
        points["knob"].append(float(config["keep"] or config["ratio"] or config["r"] or points["tokens"][-1]))
        points[metric].append(float(scores[key]))
        runs.append({"results": str(path), "costs": str(cost_file), "config": config, "samples": len(samples),
                     "provenance": head.get("provenance")})
    if not runs:
        raise LmmsResultsError("no lmms-eval results files given")
    measure = Measure(metric, "", higher_is_better, "distortion", f"lmms-eval {task} {metric}")
    from tokencodec.provenance import provenance

    return Curve.from_columns(name, points, knob="knob", measures={metric: measure},
                              description=f"lmms-eval task {task}: {len(runs)} runs",
                              provenance=provenance(config={"task": task, "metric": metric, "runs": runs}))


__all__ = ["LmmsResultsError", "curve_from_runs", "parse_model_args", "read_costs", "run_config", "run_id"]
