"""The command palette (ctrl+p): every action of the key map, and "go to run <id>".

Hits are built from plain strings (`Content(str)`, never markup: run ids and task names come
from logs), with the fuzzy-matched letters highlighted.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, cast

from textual.command import DiscoveryHit, Hit, Hits, Matcher, Provider
from textual.content import Content
from textual.dom import DOMNode

from backend.models import TaskFilter

from .bindings import KEYS, KeySpec, effective_key, key_label
from .fmt import short_id
from .sanitize import sanitize

if TYPE_CHECKING:
    from .app import AgentlogApp

__all__ = ["AgentlogCommands"]

GO_TO_RUN = "go to run "


def plain_highlight(matcher: Matcher, text: str) -> Content:
    content = Content(text)
    _score, offsets = matcher.fuzzy_search.match(matcher.query, text)
    for offset in offsets:
        if not text[offset].isspace():
            content = content.stylize(matcher.match_style, offset, offset + 1)
    return content


class AgentlogCommands(Provider):
    @property
    def agentlog(self) -> AgentlogApp:
        return cast("AgentlogApp", self.app)

    def _actions(self) -> list[tuple[KeySpec, DOMNode]]:
        """(binding, the node its action runs on) for every binding usable on this screen."""
        out: list[tuple[KeySpec, DOMNode]] = []
        targets = self.agentlog.action_targets(self.screen)
        for spec in KEYS:
            if not spec.palette:
                continue
            scopes = (spec.scope, *spec.also)
            node = next((targets[s] for s in scopes if s in targets), None)
            if node is not None:
                out.append((spec, node))
        return out

    def _runner(self, spec: KeySpec, node: DOMNode) -> Callable[[], object]:
        return partial(self.app.run_action, spec.action, node)

    def _help(self, spec: KeySpec) -> str:
        return f"key {key_label(effective_key(spec, self.agentlog.keymap))} · {spec.id}"

    async def discover(self) -> Hits:
        yield DiscoveryHit(
            Content("Go to run… (type: go to run <id or text>)"),
            partial(self.agentlog.notify, "Type part of a run id after 'go to run'.", markup=False),
            text="Go to run…",
        )
        for spec, node in self._actions():
            yield DiscoveryHit(
                Content(spec.description),
                self._runner(spec, node),
                text=spec.description,
                help=self._help(spec),
            )

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for spec, node in self._actions():
            score = matcher.match(spec.description)
            if score > 0:
                yield Hit(
                    score,
                    plain_highlight(matcher, spec.description),
                    self._runner(spec, node),
                    text=spec.description,
                    help=self._help(spec),
                )
        async for hit in self._runs(query):
            yield hit

    async def _runs(self, query: str) -> Hits:
        q = query.strip()
        lowered = q.lower()
        for prefix in (GO_TO_RUN, "goto ", "run ", "go "):
            if lowered.startswith(prefix):
                q = q[len(prefix) :].strip()
                break
        backend = self.agentlog.backend
        if backend is None or len(q) < 3:
            return
        try:
            page = await backend.list_tasks(TaskFilter(text=q), limit=8)
        except Exception:
            return
        for rank, task in enumerate(page.tasks):
            label = " · ".join(
                (f"Go to run {sanitize(task.run_id)}", sanitize(task.agent), sanitize(task.task))
            )
            yield Hit(
                0.95 - rank * 0.01,
                Content(label),
                partial(self.agentlog.go_to_run, task.run_id),
                text=label,
                help=f"{task.status.value} · opens the run ({short_id(task.run_id)})",
            )
