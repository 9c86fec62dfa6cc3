"""Render a list of sections: Markdown (figures as PNG files beside it) and one self-contained HTML page
(figures inlined as base64; no external resources of any kind)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from tokencodec.bench.report.sections import Figure, Heading, Paragraph, Provenance, Section, Table
from tokencodec.io import write_bytes_atomic, write_text_atomic

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:0.5em}
figure img{max-width:100%}"""


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return "\n".join(["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(map(_md_cell, r)) + " |" for r in rows)]) + "\n"


def to_markdown(sections: Sequence[Section]) -> str:
    """Markdown of the sections; a figure is a link to its ``name`` (``write_markdown`` writes the PNG)."""
    parts = []
    for s in sections:
        if isinstance(s, Heading):
            parts.append(f"{'#' * s.level} {s.text}\n")
        elif isinstance(s, Paragraph):
            parts.append(f"{s.text}\n")
        elif isinstance(s, Table):
            parts.append((f"## {s.title}\n\n" if s.title else "") + (f"{s.note}\n\n" if s.note else "")
                         + md_table(s.header, s.rows))
        elif isinstance(s, Figure):
            parts.append(f"![{s.caption or s.name}]({s.name})\n")
        elif isinstance(s, Provenance):
            parts.append(f"## {s.title}\n\n" + "".join(f"- {k}: {v}\n" for k, v in s.items))
        else:
            raise TypeError(f"not a report section: {s!r}")
    return "\n".join(parts)


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(sections: Sequence[Section], title: str | None = None) -> str:
    """One self-contained HTML page: styles inline, images as ``data:`` URIs, no links or scripts."""
    if title is None:
        title = next((s.text for s in sections if isinstance(s, Heading) and s.level == 1), "Report")
    body = []
    for s in sections:
        if isinstance(s, Heading):
            level = min(max(s.level, 1), 6)
            body.append(f"<h{level}>{_inline(s.text)}</h{level}>")
        elif isinstance(s, Paragraph):
            body.append(f"<p>{_inline(s.text)}</p>")
        elif isinstance(s, Table):
            body.append((f"<h2>{_inline(s.title)}</h2>" if s.title else "")
                        + (f"<p>{_inline(s.note)}</p>" if s.note else "") + html_table(s.header, s.rows))
        elif isinstance(s, Figure):
            alt = html.escape(s.caption or s.name, quote=True)
            body.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{base64.b64encode(s.png).decode()}">'
                        f"<figcaption>{html.escape(s.caption or s.name)}</figcaption></figure>")
        elif isinstance(s, Provenance):
            items = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in s.items)
            body.append(f"<h2>{html.escape(s.title)}</h2><ul>{items}</ul>")
        else:
            raise TypeError(f"not a report section: {s!r}")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_markdown(sections: Sequence[Section], path: str | Path) -> dict[str, Path]:
    """Write the Markdown file and every figure's PNG beside it; returns {"markdown": …, <figure stem>: …}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    for s in sections:
        if isinstance(s, Figure):
            out[Path(s.name).stem] = write_bytes_atomic(path.parent / s.name, s.png)
    return {"markdown": write_text_atomic(path, to_markdown(sections)), **out}


def write_html(sections: Sequence[Section], path: str | Path, title: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, to_html(sections, title))


__all__ = ["html_table", "md_table", "to_html", "to_markdown", "write_html", "write_markdown"]
