"""The Summary pane: one run's summary, streamed in, with model, tokens, cost and whether it is
the offline (extractive) summary. Everything from the run is shown as plain text."""

from __future__ import annotations

import asyncio
import logging

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from backend.facade import Backend
from backend.models import Summary, Task

from .. import fmt
from ..messages import SummaryChunkArrived, SummaryFailed
from ..sanitize import sanitize, sanitize_block
from ..status import describe

__all__ = ["SummaryPane"]

log = logging.getLogger("agentlog.tui")

HINT = "Select a run and press s for its summary (S regenerates)."


class SummaryPane(VerticalScroll, can_focus=True):
    """Streams a summary into itself; `run_id` says whose it is."""

    def __init__(self, *, title: str = "4 Summary", id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.run_id: str | None = None
        self.streaming = False
        self.target: Task | None = None
        self._parts: list[str] = []
        self._token = 0

    def compose(self) -> ComposeResult:
        yield Static(Text(HINT, style="bright_black"), id="summary-meta", classes="summary-meta")
        yield Static("", id="summary-body", classes="summary-body")

    def on_mount(self) -> None:
        self.border_title = self.title

    def _meta(self, text: Text) -> None:
        self.query_one("#summary-meta", Static).update(text)

    def _body(self, text: Text) -> None:
        self.query_one("#summary-body", Static).update(text)

    def _head(self, task: Task) -> Text:
        t = Text()
        t.append_text(fmt.status_text(task.status))
        t.append(f" {sanitize(task.run_id)}", style="bold")
        t.append(f" · {sanitize(task.agent)}")
        if task.task:
            t.append(f" · {sanitize(task.task)}")
        return t

    # ------------------------------------------------------------------ streaming

    def summarize(self, backend: Backend, task: Task, *, refresh: bool = False) -> None:
        """Stream `task`'s summary in; any earlier stream of this pane is cancelled."""
        self._token += 1
        self.start(task, refresh=refresh)
        self.run_worker(
            self._stream(backend, self._token, task.run_id, refresh),
            group="summary",
            exclusive=True,
            exit_on_error=False,
        )

    async def _stream(self, backend: Backend, token: int, run_id: str, refresh: bool) -> None:
        try:
            async for chunk in backend.summarize(run_id, refresh=refresh):
                self.post_message(SummaryChunkArrived(token, run_id, chunk.text, chunk.summary))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("summary of %s failed", run_id, exc_info=True)
            self.post_message(SummaryFailed(token, run_id, describe(exc)))

    @on(SummaryChunkArrived)
    def _on_chunk(self, message: SummaryChunkArrived) -> None:
        message.stop()
        if message.token != self._token:  # a stale stream: the selection moved on
            return
        if message.summary is not None:
            self.finish(self.target, message.summary)
        else:
            self.add_chunk(message.text)

    @on(SummaryFailed)
    def _on_failed(self, message: SummaryFailed) -> None:
        message.stop()
        if message.token == self._token:
            self.fail(message.reason)

    def cancel_stream(self, moved_to: Task | None) -> bool:
        """Drop a stream in flight (the selection moved on). True when there was one."""
        if not self.streaming:
            return False
        self._token += 1
        self.workers.cancel_group(self, "summary")
        self.cancelled(moved_to)
        return True

    # ------------------------------------------------------------------ display

    def start(self, task: Task, *, refresh: bool) -> None:
        self.run_id = task.run_id
        self.target = task
        self.streaming = True
        self._parts = []
        head = self._head(task)
        head.append("\n")
        head.append("regenerating…" if refresh else "summarizing…", style="italic bright_black")
        self._meta(head)
        self._body(Text(""))
        self.border_title = f"{self.title} · {fmt.short_id(task.run_id)}"

    def add_chunk(self, text: str) -> None:
        if text:
            self._parts.append(text)
            self._body(Text(sanitize_block("".join(self._parts))))

    def finish(self, task: Task | None, summary: Summary) -> None:
        self.streaming = False
        head = self._head(task) if task is not None else Text(sanitize(summary.run_id), "bold")
        head.append("\n")
        if summary.offline:
            head.append(" OFFLINE ", style="bold reverse")
            head.append(f" extractive summary, no AI · model {sanitize(summary.model)}")
        else:
            head.append(f"model {sanitize(summary.model)}")
        tok = summary.input_tokens + summary.output_tokens
        if tok or not summary.offline:
            head.append(
                f" · tokens {fmt.tokens(summary.input_tokens)}→{fmt.tokens(summary.output_tokens)}"
            )
            head.append(f" · cost {fmt.cost(summary.cost_usd)}")
        if summary.error:
            head.append("\n")
            head.append(sanitize(summary.error), style="yellow")
        self._meta(head)
        self._body(Text(sanitize_block(summary.text or "".join(self._parts))))

    def fail(self, reason: str) -> None:
        self.streaming = False
        self._meta(Text(f"summary failed: {sanitize(reason)}", style="red"))

    def cancelled(self, moved_to: Task | None) -> None:
        """The selection moved on while this summary was streaming."""
        self.streaming = False
        self.run_id = None
        self._parts = []
        msg = "summary cancelled: the selection moved on."
        if moved_to is not None:
            msg += f" Press s for {sanitize(moved_to.run_id)}."
        self._meta(Text(msg, style="bright_black"))
        self._body(Text(""))
        self.border_title = self.title

    def reset(self) -> None:
        self.run_id = None
        self.streaming = False
        self._parts = []
        self._meta(Text(HINT, style="bright_black"))
        self._body(Text(""))
        self.border_title = self.title
