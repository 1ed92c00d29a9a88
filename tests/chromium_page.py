"""Read a rendered report page back from headless Chromium: where each chart's series,
bars and ticks landed on screen, in CSS pixels, so a test can check what a reader sees.

The page itself has no script; a copy with one measuring script appended is loaded,
and the script writes its measurements into the DOM that ``--dump-dom`` prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = "--window-size=1400,3000"

MEASURE = """
<script>
(() => {
  const screen = (el, p) => new DOMPoint(p.x, p.y).matrixTransform(el.getScreenCTM());
  const out = {series: {}, ticks: {}, texts: {}};
  for (const svg of document.querySelectorAll("svg.chart")) {
    const chart = svg.closest("figure").id.replace("chart-", "");
    out.texts[chart] = [...svg.querySelectorAll("text")].map(t => t.textContent);
    for (const g of svg.querySelectorAll("g[id]")) {
      const path = g.querySelector(":scope > path");
      if (!path) continue;
      const length = path.getTotalLength();
      const box = path.getBoundingClientRect();
      out.series[g.id] = {
        start: screen(path, path.getPointAtLength(0)),
        end: screen(path, path.getPointAtLength(length)),
        box: {left: box.left, right: box.right, top: box.top, bottom: box.bottom},
      };
    }
    for (const axis of ["x", "y"]) {
      out.ticks[`${chart}-${axis}`] = [...svg.querySelectorAll(`g[id^="${chart}-${axis}tick_"]`)]
        .map(tick => {
          const mark = tick.querySelector("use").getBoundingClientRect();
          const label = tick.querySelector("text");
          return {
            at: axis === "x" ? (mark.left + mark.right) / 2 : (mark.top + mark.bottom) / 2,
            label: label ? label.textContent : "",
          };
        });
    }
  }
  const pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"""


def _flags(profile: Path) -> list[str]:
    assert CHROMIUM is not None
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        WINDOW,
        f"--user-data-dir={profile}",
    ]


def measure(page: Path, folder: Path) -> dict[str, Any]:
    """Series end points, bar boxes, tick positions and chart texts of ``page``."""
    probe = folder / f"{page.stem}-measured.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"))
    dom = subprocess.run(
        [*_flags(folder / "profile"), "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    data: dict[str, Any] = json.loads(found.group(1).replace("&amp;", "&"))
    data["dom"] = dom
    return data


def screenshot(page: Path, shot: Path, folder: Path, height: int = 3000) -> None:
    """A PNG of the page as a 1400-pixel-wide browser window shows it."""
    subprocess.run(
        [
            *_flags(folder / "profile"),
            f"--window-size=1400,{height}",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )


def tick_value(label: str) -> float:
    """The number a tick label shows: ``$0.04``, ``25 %``, ``1,200``, ``-3``."""
    return float(label.replace("$", "").replace("%", "").replace(",", "").replace("\u2212", "-"))


def axis_scale(ticks: list[dict[str, Any]]) -> Callable[[float], float]:
    """Value to pixel along one linear axis, fitted through its labelled ticks (the fit
    must be exact: every tick on the line, within half a pixel)."""
    points = [(tick_value(t["label"]), float(t["at"])) for t in ticks if t["label"]]
    assert len(points) >= 2, ticks
    (v0, p0), (v1, p1) = points[0], points[-1]
    slope = (p1 - p0) / (v1 - v0)
    for v, p in points:
        assert abs(p0 + slope * (v - v0) - p) < 0.5, (v, p, points)
    return lambda v: p0 + slope * (v - v0)
