"""Fonts for the lab's matplotlib figures: Chinese subjects must not become boxes.

matplotlib draws with the first family in its list that has a glyph; DejaVu Sans
(its default) has no CJK glyphs, so "你好" becomes empty boxes unless a CJK
family is named as a fallback. The lab's figures name DejaVu Sans first and then
every installed Noto CJK / WenQuanYi / Source Han family. The fonts are a
declared dependency: ``fonts-noto-cjk`` in ``binder/apt.txt`` and ``scripts/test``.
When none is installed a figure says so in its own corner rather than showing
boxes without a word.
"""

from __future__ import annotations

import functools
import re

#: Families tried after DejaVu Sans, in order, for CJK glyphs.
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Source Han Sans SC",
                "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback")

_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


@functools.lru_cache(maxsize=1)
def installed_cjk_families() -> tuple[str, ...]:
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    return tuple(f for f in CJK_FAMILIES if f in names)


def figure_font_family() -> list[str]:
    """The ``family`` list for figure text: Latin first, then a CJK fallback."""
    return ["DejaVu Sans", *installed_cjk_families(), "sans-serif"]


def missing_font_note(text: str) -> str | None:
    """A sentence for the figure when ``text`` has CJK characters and no CJK font is installed."""
    if _CJK.search(text) and not installed_cjk_families():
        return ("no CJK font installed: Chinese/Japanese/Korean text shows as boxes "
                "(apt-get install fonts-noto-cjk)")
    return None
