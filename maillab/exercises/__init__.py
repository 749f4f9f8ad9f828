"""Exercises that check themselves: ``%mail check NAME`` / ``lab.check(NAME)``.

Each exercise is a task from the material (``notebooks/exercises/NN_NAME.ipynb``,
the teacher's solution in ``notebooks/solutions/NN_NAME.ipynb``). Its check
judges the student's own attempt from what the lab recorded (the servers'
events) and what it holds (the store), whichever client the student used, and
says what is still missing: never just "wrong".

A check returns a :class:`CheckResult`: ``.passed``, ``.hints`` (what is
missing, one sentence each, with the next thing to try; a command to type in it
is marked with backticks, shown as code in HTML) and ``.found`` (what the lab
saw that counts).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..lab import Lab


@dataclass
class CheckResult:
    name: str
    passed: bool
    hints: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        head = f"{self.name}: {'PASSED ✓' if self.passed else 'not yet ✗'}"
        lines = [head, *(f"  seen: {f}" for f in self.found), *(f"  missing: {h}" for h in self.hints)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        # the shared view style (views/theme.py): the presenter's text size, the
        # theme's colours in light and dark, a glyph beside the colour
        # commands in a hint are marked `like this` (plain text keeps the backticks):
        # they show in the code font
        from ..views.theme import badge, page, with_code

        head = badge("ok", "PASSED") if self.passed else badge("err", "not yet")
        items = "".join(f"<li>seen: {with_code(f)}</li>" for f in self.found)
        items += "".join(f"<li><b>missing:</b> {with_code(h)}</li>" for h in self.hints)
        return page(f"<b>{html.escape(self.name)}</b>: {head}<ul>{items}</ul>", kind="check")


Check = Callable[["Lab", "str | None"], CheckResult]


@dataclass(frozen=True)
class Exercise:
    number: int
    name: str
    title: str
    check: Check

    @property
    def notebook(self) -> str:
        return f"{self.number:02d}_{self.name}.ipynb"


#: Every exercise, in the order of the material.
EXERCISES: dict[str, Exercise] = {}


def exercise(number: int, name: str, title: str) -> Callable[[Check], Check]:
    def deco(func: Check) -> Check:
        EXERCISES[name] = Exercise(number, name, title, func)
        return func

    return deco


def names() -> list[str]:
    _load()
    return [e.name for e in sorted(EXERCISES.values(), key=lambda e: e.number)]


def check(lab: Lab, name: str, answer: str | None = None) -> CheckResult:
    """Judge the attempt at exercise ``name`` from ``lab``'s events and store."""
    _load()
    ex = EXERCISES.get(name)
    if ex is None:
        raise KeyError(f"no exercise {name!r}; there are: {', '.join(names())}")
    return ex.check(lab, answer)


def _load() -> None:
    from . import reading, sending  # noqa: F401 - they register their exercises
