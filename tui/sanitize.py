"""The one sanitizer for text that comes from logs (lines, task names, errors, summaries).

A log line is data. Before it is shown, every character that could change the screen beyond its
own cells is replaced by a visible placeholder:

- C0 controls (NUL, BEL, BS, CR, LF, ESC, ...) -> the Unicode control pictures (␀ ␇ ␈ ␍ ␊ ␛);
  a TAB becomes one space (tabs are legitimate in stack traces and carry no escape power).
- DEL -> ␡; C1 controls (U+0080-U+009F, e.g. the 8-bit CSI) -> `\\x9b`-style text.
- bidi controls (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069) and the line/paragraph
  separators U+2028/U+2029 -> `\\u202e`-style text.
- lone surrogates (undecodable bytes kept by `surrogateescape`) -> `\\xff`-style text.

So an ANSI or OSC sequence shows as `␛[31m` / `␛]52;c;...␇` and never reaches the terminal. The
result is always passed to Rich as plain text (`Text(str)`), never parsed as markup.
"""

from __future__ import annotations

import re

from rich.text import Text

__all__ = ["safe_text", "sanitize", "sanitize_block"]


def _build_table() -> dict[int, str]:
    table: dict[int, str] = {c: chr(0x2400 + c) for c in range(0x20)}
    table[0x09] = " "
    table[0x7F] = "\u2421"  # ␡
    for c in range(0x80, 0xA0):
        table[c] = f"\\x{c:02x}"
    for c in (
        0x061C,
        0x200E,
        0x200F,
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ):
        table[c] = f"\\u{c:04x}"
    for c in range(0xD800, 0xE000):
        table[c] = f"\\x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"\\u{c:04x}"
    return table


_TABLE = _build_table()
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)


def sanitize(text: str) -> str:
    """`text` as one safe display line (see the module docstring)."""
    if _UNSAFE.search(text) is None:
        return text
    return text.translate(_TABLE)


def sanitize_block(text: str) -> str:
    """Like `sanitize`, but keeps line breaks as line breaks (for multi-line summaries)."""
    return "\n".join(sanitize(line) for line in text.split("\n"))


def safe_text(text: str, style: str = "", *, block: bool = False) -> Text:
    """A Rich `Text` of sanitized plain text (never markup)."""
    return Text(sanitize_block(text) if block else sanitize(text), style=style)
