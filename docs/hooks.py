"""MkDocs hook: fills the generated reference pages (settings, commands) from the code.

A page holds a block from ``<!-- generated: settings -->`` (or ``commands``) to
``<!-- end generated -->``, committed as ``python -m cli.reference`` wrote it; the build
fills it afresh from ``cli.reference``, so a built page is the code's even before that
command is run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


MARKERS = re.compile(r"^<!-- (generated: \w+|end generated) -->\n", re.MULTILINE)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each marker with its generated Markdown."""
    if "<!-- generated:" not in markdown:
        return markdown
    from cli.main import cli
    from cli.reference import fill, reference_pages

    # The markers are for `python -m cli.reference`, not for the reader.
    return MARKERS.sub("", fill(markdown, reference_pages(cli)))
