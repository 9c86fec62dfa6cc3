"""Accuracy vs packet loss from a token-communication study: the figure (one curve per scheme, 95 % bootstrap
bands over samples) and the Markdown tables (:mod:`tokencodec.channels.report`; ``tokencodec study`` writes
them for a channel study with its first metric, this redraws them with another metric or reference lines).

    python scripts/token_communication.py docs/studies/token-communication/diagnostic --metric accuracy \
        --line "uncompressed=0.897" --line "no image (grey)=0.237"
    python scripts/token_communication.py docs/studies/token-communication/efficientnet-view --metric top1_agreement

Writes ``<folder>/<metric>_vs_loss.png`` and ``<folder>/summary.md`` and prints the tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokencodec.channels.report import write_channel_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--title", default=None)
    parser.add_argument("--line", action="append", default=[], metavar="LABEL=VALUE",
                        help="a horizontal reference line (e.g. the uncompressed accuracy, the no-image answer's)")
    args = parser.parse_args()
    lines = {}
    for item in args.line:
        label, _, value = item.rpartition("=")
        lines[label] = float(value)
    try:
        paths = write_channel_report(args.folder, args.metric, args.title, lines)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    print(paths["markdown"].read_text())


if __name__ == "__main__":
    main()
