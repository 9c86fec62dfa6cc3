"""Which token-compression method runs on which model adapter: the support matrix.

Each family's adapters answer ``supports(method)`` from the method's declared properties (stage, needs,
video) and what they supply (:mod:`tokencodec.adapters.base`), so a new method or family lands in the
matrix without editing this file.
"""

from __future__ import annotations

from tokencodec.adapters.registry import FAMILIES
from tokencodec.tokens.compress import METHODS


def support_matrix() -> dict[str, dict[str, str]]:
    """``{method: {adapter: "yes" | "fallback" | "video" | "—"}}`` for every registered method ("video": runs
    on clips only)."""
    return {name: {f.label: f.supports(METHODS.get(name)) for f in FAMILIES} for name in METHODS.names()}


def matrix_markdown() -> str:
    adapters = [f.label for f in FAMILIES]
    lines = ["| method | stage | " + " | ".join(adapters) + " |", "|---|---|" + "---|" * len(adapters)]
    for name, row in support_matrix().items():
        lines.append(f"| {name} | {METHODS.get(name).stage} | " + " | ".join(row[a] for a in adapters) + " |")
    return "\n".join(lines) + "\n"


def update_readme(path: str = "README.md") -> None:
    """Rewrite the table between the README's support-matrix markers."""
    import re
    from pathlib import Path

    readme = Path(path)
    text = readme.read_text(encoding="utf-8")
    block = f"<!-- support-matrix -->\n{matrix_markdown()}<!-- /support-matrix -->"
    readme.write_text(re.sub(r"<!-- support-matrix -->\n.*?<!-- /support-matrix -->", lambda _: block, text,
                             flags=re.S), encoding="utf-8")


if __name__ == "__main__":  # python -m tokencodec.adapters.support  (updates ./README.md)
    update_readme()
