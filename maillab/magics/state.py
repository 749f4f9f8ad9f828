"""The kernel's one lab: created by ``%mail start``, shared by every magic."""

from __future__ import annotations

import atexit
from typing import Any

from ..lab import Lab

_lab: Lab | None = None


def current_lab(start: bool = True, **options: Any) -> Lab:
    """The kernel's lab, started on first use (so ``%pop3 bob`` works right away)."""
    global _lab
    if _lab is None:
        _lab = Lab(**options)
    if start and not _lab.started:
        _lab.start()
    return _lab


def replace_lab(lab: Lab | None) -> None:
    global _lab
    if _lab is not None and _lab is not lab:
        _lab.stop()
    _lab = lab


def shutdown() -> None:
    replace_lab(None)


atexit.register(shutdown)


def existing_lab() -> Lab | None:
    """The kernel's lab if one was made, without making or starting one."""
    return _lab
