"""Where the Textual CSS lives: inside the installed package (the wheel ships `styles/` as
`tui/styles`), else the checkout's `styles/` next to `tui/`."""

from __future__ import annotations

from pathlib import Path

import tui

CSS_FILES = ("agentlog.tcss",)


def styles_dir() -> Path:
    packaged = Path(tui.__file__).parent / "styles"
    if packaged.is_dir():
        return packaged
    return Path(tui.__file__).resolve().parent.parent / "styles"


def css_paths() -> list[Path]:
    base = styles_dir()
    return [base / name for name in CSS_FILES]
