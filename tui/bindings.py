"""Every key binding of the app, with a stable id (remappable through `tui.keys` in the config).

Screens and widgets take their `BINDINGS` from here (`bindings_for(scope)`), and the help overlay
lists this table, so the two never disagree. A remap in the config (`{"triage.ack": "A"}`) goes
through Textual's keymap: the binding keeps its id, only its key changes. A binding with a
`short` label shows in the footer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from textual.binding import Binding

__all__ = [
    "KEYS",
    "SCOPE_TITLES",
    "KeySpec",
    "bindings_for",
    "effective_key",
    "key_label",
    "unknown_ids",
]


@dataclass(frozen=True, slots=True)
class KeySpec:
    id: str
    key: str  # Textual key names; several separated by commas
    action: str
    description: str
    scope: str
    short: str = ""  # the footer's label; empty = not in the footer
    palette: bool = True  # offered in the command palette (movement keys are not)
    also: tuple[str, ...] = ()  # other scopes where the same binding (same id) applies


SCOPE_TITLES: dict[str, str] = {
    "app": "Everywhere",
    "dashboard": "Dashboard (any pane)",
    "tasks": "Tasks pane",
    "lines": "Live tail and run log",
    "patterns": "Failure patterns pane",
    "summary": "Summary pane",
    "detail": "Run detail screen",
}

K = KeySpec
KEYS: tuple[KeySpec, ...] = (
    K("app.quit", "q", "quit", "Quit", "app", short="quit"),
    K("app.help", "question_mark", "help", "Help: every key", "app", short="help"),
    K(
        "app.palette",
        "ctrl+p",
        "command_palette",
        "Command palette (every action, go to run)",
        "app",
        short="palette",
        palette=False,
    ),
    K("pane.next", "tab", "next_pane", "Next pane", "dashboard", palette=False),
    K("pane.previous", "shift+tab", "previous_pane", "Previous pane", "dashboard", palette=False),
    K("pane.tasks", "1", "focus_pane('tasks')", "Focus the Tasks pane", "dashboard"),
    K("pane.tail", "2", "focus_pane('tail')", "Focus the Live tail", "dashboard"),
    K("pane.patterns", "3", "focus_pane('patterns')", "Focus the Failure patterns", "dashboard"),
    K("pane.summary", "4", "focus_pane('summary')", "Focus the Summary", "dashboard"),
    K("summary.run", "s", "summarize", "Summarize the selected run", "dashboard", short="summary"),
    K("summary.regenerate", "S", "summarize(True)", "Regenerate the summary", "dashboard"),
    K(
        "triage.ack",
        "a",
        "triage('acked')",
        "Ack the selected run",
        "dashboard",
        short="ack",
        also=("detail",),
    ),
    K(
        "triage.resolve",
        "r",
        "triage('resolved')",
        "Resolve the selected run",
        "dashboard",
        also=("detail",),
    ),
    K(
        "triage.ignore",
        "i",
        "triage('ignored')",
        "Ignore the selected run (optional note)",
        "dashboard",
        also=("detail",),
    ),
    K(
        "triage.undo",
        "u",
        "undo_triage",
        "Undo the last triage action",
        "dashboard",
        also=("detail",),
    ),
    K("tail.narrow", "l", "narrow_tail", "Tail only the selected run", "dashboard"),
    K("tail.widen", "L", "widen_tail", "Tail all runs again", "dashboard"),
    K("tail.follow", "space", "toggle_follow", "Follow / pause the live tail", "dashboard"),
    K(
        "range.pick",
        "t",
        "pick_range",
        "Time range (15m 1h 6h 24h 7d custom)",
        "dashboard",
        short="range",
    ),
    K("banner.dismiss", "escape", "dismiss_banner", "Dismiss the alert banner", "dashboard"),
    K("tasks.down", "j", "cursor_down", "Down", "tasks", palette=False),
    K("tasks.up", "k", "cursor_up", "Up", "tasks", palette=False),
    K("tasks.top", "g", "scroll_top", "First run", "tasks", palette=False),
    K("tasks.bottom", "G", "scroll_bottom", "Last run (loads more)", "tasks", palette=False),
    K("tasks.page_down", "ctrl+d", "page_down", "Page down", "tasks", palette=False),
    K("tasks.page_up", "ctrl+u", "page_up", "Page up", "tasks", palette=False),
    K("tasks.open", "enter", "open_run", "Open the run (detail screen)", "tasks", short="open"),
    K(
        "tasks.first_error",
        "e",
        "open_first_error",
        "Open the run at its first error",
        "tasks",
        short="1st error",
    ),
    K("tasks.filter", "slash", "screen.filter", "Filter as you type", "tasks", short="filter"),
    K("tasks.failed", "f", "screen.toggle_failed", "Quick filter: failing only", "tasks"),
    K(
        "tasks.mine",
        "m",
        "screen.toggle_mine",
        "Quick filter: mine to triage (new, failing)",
        "tasks",
    ),
    K("tasks.agent", "b", "screen.pick_agent", "Quick filter: by agent", "tasks"),
    K("tasks.sort", "o", "screen.cycle_sort", "Sort: failing first / newest / oldest", "tasks"),
    K("tasks.clear", "x", "screen.clear_filters", "Clear every filter", "tasks"),
    K("lines.down", "j,down", "line_down", "Down", "lines", palette=False),
    K("lines.up", "k,up", "line_up", "Up (pauses the tail)", "lines", palette=False),
    K("lines.top", "g,home", "line_top", "Oldest line", "lines", palette=False),
    K(
        "lines.bottom",
        "G,end",
        "line_bottom",
        "Newest line (resumes the tail)",
        "lines",
        palette=False,
    ),
    K("lines.page_down", "ctrl+d,pagedown", "line_page_down", "Page down", "lines", palette=False),
    K("lines.page_up", "ctrl+u,pageup", "line_page_up", "Page up", "lines", palette=False),
    K("lines.next_error", "e", "next_error", "Next error line", "lines", short="next error"),
    K("lines.previous_error", "E", "previous_error", "Previous error line", "lines"),
    K("lines.search", "slash", "search", "Search as you type", "lines", short="search"),
    K("lines.next_match", "n", "next_match", "Next match", "lines"),
    K("lines.previous_match", "N", "previous_match", "Previous match", "lines"),
    K("lines.raw", "v", "toggle_raw", "Lines as logged / compact", "lines"),
    K("lines.copy", "y", "copy_line", "Copy the line (OSC 52)", "lines", short="copy"),
    K("patterns.down", "j", "cursor_down", "Down", "patterns", palette=False),
    K("patterns.up", "k", "cursor_up", "Up", "patterns", palette=False),
    K(
        "patterns.select",
        "enter",
        "select_pattern",
        "Show the runs that hit it",
        "patterns",
        short="its runs",
    ),
    K("summary.down", "j", "scroll_down", "Scroll down", "summary", palette=False),
    K("summary.up", "k", "scroll_up", "Scroll up", "summary", palette=False),
    K("summary.top", "g", "scroll_home", "Top", "summary", palette=False),
    K("summary.bottom", "G", "scroll_end", "Bottom", "summary", palette=False),
    K("detail.back", "escape", "back", "Back to the dashboard", "detail", short="back"),
    K("detail.summarize", "s", "summarize", "Summarize this run", "detail", short="summary"),
    K("detail.regenerate", "S", "summarize(True)", "Regenerate the summary", "detail"),
    K("detail.switch", "tab", "switch_focus", "Log / summary", "detail"),
)
del K

_BY_ID = {k.id: k for k in KEYS}

_DISPLAY = {
    "question_mark": "?",
    "slash": "/",
    "escape": "esc",
    "pagedown": "pgdn",
    "pageup": "pgup",
}


def bindings_for(scope: str) -> list[Binding]:
    """The Textual bindings of one scope (ids included, so the keymap can remap them)."""
    return [
        Binding(
            k.key,
            k.action,
            k.short or k.description,
            show=bool(k.short) and k.action != "command_palette",
            tooltip=k.description,
            id=k.id,
            key_display=key_label(k.key) if "," not in k.key else None,
            priority=k.action == "command_palette",
        )
        for k in KEYS
        if k.scope == scope or scope in k.also
    ]


def key_label(keys: str) -> str:
    """`j,down` -> `j/down`; `question_mark` -> `?`; `ctrl+d` -> `^d`."""
    out = []
    for key in keys.split(","):
        key = key.strip()
        if key in _DISPLAY:
            out.append(_DISPLAY[key])
        elif key.startswith("ctrl+"):
            out.append("^" + key[5:])
        else:
            out.append(key)
    return "/".join(out)


def effective_key(spec: KeySpec, keymap: Mapping[str, str]) -> str:
    return keymap.get(spec.id, spec.key)


def unknown_ids(keymap: Mapping[str, str]) -> list[str]:
    return sorted(k for k in keymap if k not in _BY_ID)
