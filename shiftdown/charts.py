"""The one charting path of the project: matplotlib with one house style, drawn as inline
SVG for the HTML report and as PNG for ``eval --chart`` and ``policy curve --chart``.

Every chart is a :func:`chart` block: the style (fonts, grid, title placement) is set
here, axes get their units through :func:`label_axes` and the tick formatters below, and
the result leaves through :func:`to_svg` or :func:`save_png`. matplotlib is imported
inside the functions, so the workers and the CLI start without it.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

COLORS = {
    "frontier": "#c44e52",
    "cascade": "#2a7f3f",
    "slm": "#4c72b0",
    "accent": "#dd8452",
    "muted": "#6f6f6f",
}

# Keyed by rcParams name (Any: matplotlib types the keys as one long Literal).
STYLE: dict[Any, Any] = {
    # Text stays text in the SVG: a reader can select it and a test can read it.
    "svg.fonttype": "none",
    # Clip-path ids derive from this salt; fixed, the same data draws the same page.
    "svg.hashsalt": "shiftdown",
    # A "$" in a tick label or title is a dollar sign, never the start of TeX.
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 9.5,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlepad": 10,
    "axes.labelsize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "lines.linewidth": 2.0,
    "figure.facecolor": "white",
    "savefig.dpi": 110,
}


@contextmanager
def chart(
    width: float = 7.4, height: float = 3.8, ncols: int = 1
) -> Iterator[tuple[Figure, list[Axes]]]:
    """A figure of ``ncols`` axes side by side in the house style; draw and save it
    inside the block (the style applies while the block runs)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        # A bare Figure, not pyplot: no global state, nothing to close, safe in threads.
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        yield fig, list(axes)


def label_axes(ax: Axes, title: str, xlabel: str, ylabel: str, subtitle: str = "") -> None:
    """The title says what to read from the chart; the axis labels carry the units."""
    ax.set_title(title)
    if subtitle:
        note = ax.text(
            0,
            1.01,
            subtitle,
            transform=ax.transAxes,
            fontsize=8.5,
            color=COLORS["muted"],
            va="bottom",
            ha="left",
        )
        # Kept out of the layout: a long note must not squeeze the plot; the title's
        # padding leaves its line free.
        note.set_in_layout(False)
        ax.set_title(title, pad=10 + 12 * (subtitle.count("\n") + 1))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def usd_axis(axis: Axis) -> None:
    """Tick labels in dollars (``$0.05``), as many decimals as the ticks need."""
    axis.set_major_formatter(_prefixed("$", ""))


def percent_axis(axis: Axis) -> None:
    """Tick labels as percentages of values already in percent (``25 %``)."""
    axis.set_major_formatter(_prefixed("", " %"))


def log_axis(axis: Axis) -> None:
    """A logarithmic axis with plain numbers at 1, 2 and 5 times powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.10g}"))
    axis.set_minor_formatter(NullFormatter())


def _prefixed(prefix: str, suffix: str) -> Any:
    from matplotlib.ticker import ScalarFormatter

    class Prefixed(ScalarFormatter):
        # ScalarFormatter picks one decimal count for all ticks from their spacing.
        def __call__(self, x: float, pos: int | None = None) -> str:
            text = str(super().__call__(x, pos)).replace("\u2212", "-")
            if text.startswith("-"):
                return f"-{prefix}{text[1:]}{suffix}"
            return f"{prefix}{text}{suffix}"

    formatter = Prefixed(useOffset=False, useMathText=False)
    formatter.set_scientific(False)
    return formatter


_SVG_START = re.compile(r"<svg\b")
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_NAMESPACES = re.compile(r'\s+xmlns(:xlink)?="[^"]*"')


def to_svg(fig: Figure, name: str, description: str) -> str:
    """The figure as an SVG element for inline HTML, described for screen readers. Every
    id in it is prefixed with ``name-``, so that several charts share a page and an
    artist drawn with ``gid="actual"`` is found as ``#name-actual``."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    match = _SVG_START.search(text)
    text = text[match.start() if match else 0 :]
    # An HTML parser knows the SVG and XLink namespaces; the addresses would only make
    # the page look as if it fetched something.
    text = _NAMESPACES.sub("", _METADATA.sub("", text))
    text = text.replace('id="', f'id="{name}-')
    text = text.replace('href="#', f'href="#{name}-').replace("url(#", f"url(#{name}-")
    label = html.escape(description, quote=True)
    return text.replace("<svg", f'<svg class="chart" role="img" aria-label="{label}"', 1)


def save_png(fig: Figure, path: Path) -> None:
    """The figure as a PNG file."""
    fig.savefig(path, format="png")
