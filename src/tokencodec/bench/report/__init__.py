"""The report engine: curves → sections (``build``, from ``tables`` and ``plots``) → Markdown, HTML, PNG
(``render``). Codec sweeps, token sweeps and studies all go through it."""

from tokencodec.bench.report.build import build_report, write_codec_report, write_report
from tokencodec.bench.report.sections import Figure, Heading, Paragraph, Provenance, Section, Table
from tokencodec.bench.report.tables import BDRow, bd_row, bd_rows

__all__ = ["BDRow", "Figure", "Heading", "Paragraph", "Provenance", "Section", "Table", "bd_row", "bd_rows",
           "build_report", "write_codec_report", "write_report"]
