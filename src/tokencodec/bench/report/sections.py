"""A report as data: a list of small frozen sections that ``render`` turns into Markdown and HTML.

Text in ``Heading``, ``Paragraph`` and table cells is plain text; ``**bold**`` is the one markup
both renderers understand.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    """A titled table of strings; ``note`` is a paragraph shown between the title and the table."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "header", tuple(self.header))
        object.__setattr__(self, "rows", tuple(tuple(r) for r in self.rows))
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"table {self.title!r}: a row has {len(row)} cells for {len(self.header)} columns")


@dataclass(frozen=True)
class Figure:
    """A PNG image; ``name`` is its file name beside the Markdown file."""

    name: str
    png: bytes = field(repr=False)
    caption: str = ""


@dataclass(frozen=True)
class Provenance:
    """What produced the numbers: (label, value) pairs, e.g. ("tokencodec", "0.1.0 (commit …)")."""

    items: tuple[tuple[str, str], ...]
    title: str = "Provenance"

    @property
    def text(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in self.items)


Section = Heading | Paragraph | Table | Figure | Provenance

__all__ = ["Figure", "Heading", "Paragraph", "Provenance", "Section", "Table"]
