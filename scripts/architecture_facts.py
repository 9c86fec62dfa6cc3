"""Facts about the source tree, from the code itself: folders, import circles, the largest modules.

    python scripts/architecture_facts.py            # Markdown on stdout
    python scripts/architecture_facts.py --json

Imports are read with ``ast`` from every ``import``/``from`` statement, the ones inside functions too
(a lazy import is still a dependency), so a circle shows whatever the import time. Circles are reported
between modules and between packages (``tokencodec.adapters`` → ``tokencodec.models`` → … →
``tokencodec.adapters``).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "tokencodec"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module ``name`` imports (resolved to the longest known prefix)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from package import submodule" depends on the submodule; "from module import name" on the module
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = subs if len(subs) == len(node.names) else [*subs, base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != PACKAGE:
                found.add(target)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def package_of(module: str) -> str:
    """The top-level folder a module belongs to (``tokencodec.adapters.llava`` → ``tokencodec.adapters``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (ROOT / Path(*parts)).is_dir() else module


def facts(root: Path = ROOT) -> dict:
    edges = graph(root)
    mods = modules(root)
    packages: dict[str, set[str]] = defaultdict(set)
    for a, targets in edges.items():
        for b in targets:
            if package_of(a) != package_of(b):
                packages[package_of(a)].add(package_of(b))
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in mods.items()}
    folders: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, lines in sizes.items():
        folders[package_of(name)][0] += 1
        folders[package_of(name)][1] += lines
    return {
        "folders": {k: {"modules": v[0], "lines": v[1]} for k, v in sorted(folders.items())},
        "module_circles": circles(edges),
        "package_circles": circles({k: set(v) for k, v in packages.items()}),
        "package_imports": {k: sorted(v) for k, v in sorted(packages.items())},
        "largest_modules": sorted(sizes.items(), key=lambda kv: -kv[1])[:12],
    }


def markdown(f: dict) -> str:
    lines = ["| folder | modules | lines |", "|---|---|---|"]
    lines += [f"| {k} | {v['modules']} | {v['lines']} |" for k, v in f["folders"].items()]
    lines += ["", f"Import circles between modules: {len(f['module_circles'])}"]
    lines += [f"- {' ↔ '.join(c)}" for c in f["module_circles"]]
    lines += [f"Import circles between folders: {len(f['package_circles'])}"]
    lines += [f"- {' ↔ '.join(c)}" for c in f["package_circles"]]
    lines += ["", "| folder | imports |", "|---|---|"]
    lines += [f"| {k} | {', '.join(p.removeprefix(PACKAGE + '.') for p in v)} |"
              for k, v in f["package_imports"].items()]
    lines += ["", "| largest modules | lines |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in f["largest_modules"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    f = facts()
    print(json.dumps(f, indent=1) if args.json else markdown(f), end="" if not args.json else "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
