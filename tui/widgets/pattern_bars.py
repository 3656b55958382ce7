"""Bar chart (plotext) of the top patterns' line counts, labelled by rank (#1, #2, ...) so no
log text ever goes through plotext's ANSI output.

plotext draws horizontal bars reliably only when the canvas has exactly one row per bar and one
between bars; the plot is sized to that (2n+3 rows with title and axis) and the rest left blank.
"""

from __future__ import annotations

from rich.text import Text
from textual_plotext import PlotextPlot

from backend.models import Pattern

__all__ = ["PatternBars"]

TOP = 8


class PatternBars(PlotextPlot):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._data: list[tuple[str, int]] = []

    def show(self, patterns: list[Pattern]) -> None:
        self._data = [(f"#{i}", p.count) for i, p in enumerate(patterns[:TOP], 1)]
        self.refresh()

    def bars_that_fit(self, height: int) -> int:
        return max(1, min(TOP, len(self._data), (height - 3) // 2))

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        n = self.bars_that_fit(height)
        rows = min(height, 2 * n + 3)
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("top patterns · lines")
        data = self._data[:n]
        if data:
            plt.bar(
                [label for label, _ in reversed(data)],
                [v for _, v in reversed(data)],
                orientation="horizontal",
                width=0.1,
            )
        plt.plotsize(width, rows)
        plt._set_size(width, rows)
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        return Text.from_ansi(plt.build())
