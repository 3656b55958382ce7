"""Line chart (plotext) of the error rate over the time window (errors per minute)."""

from __future__ import annotations

from textual_plotext import PlotextPlot

__all__ = ["ErrorRateChart"]


class ErrorRateChart(PlotextPlot):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._points: list[tuple[float, float]] = []
        self._end_s = 0.0

    def show(self, points: list[tuple[float, float]], end_s: float) -> None:
        self._points = list(points)
        self._end_s = end_s
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("errors/min")
        if self._points:
            xs = [(t - self._end_s) / 60 for t, _ in self._points]
            ys = [v for _, v in self._points]
            plt.plot(xs, ys, marker="braille")
            plt.xlabel("minutes ago")
        self.refresh()

    def on_mount(self) -> None:
        self.replot()
