"""MkDocs hook: fills the generated reference pages (settings, commands) from the code.

A page holds a marker line ``<!-- generated: settings -->`` or ``<!-- generated: commands -->``;
the build replaces it with ``cli.reference``'s Markdown, so the pages are never edited by
hand and cannot fall out of step with the code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.MULTILINE)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each marker with its generated Markdown."""
    if "<!-- generated:" not in markdown:
        return markdown
    from cli.main import cli
    from cli.reference import reference_pages

    pages = reference_pages(cli)
    return MARKER.sub(lambda m: pages[m.group(1)], markdown)
