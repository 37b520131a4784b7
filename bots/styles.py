"""The styles the bot renders, and which choices of style and strength it accepts.

The service owns these rules: every request and every button is checked here, so a choice the
models cannot render (an unknown style, a strength a pSp style does not have) is refused with
words, never passed on to inference.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from bots import texts
from bots.refusals import RefusalKind, Refused
from inference.pipeline import StyleInfo


class Styles:
    """The loaded styles (names, labels, strengths, default strengths) and the default style."""

    def __init__(self, styles: Mapping[str, StyleInfo], default: str) -> None:
        self.view: Mapping[str, StyleInfo] = MappingProxyType(dict(styles))
        self.default = default

    def choose(self, style: str | None, strength: int | None) -> tuple[str, int]:
        """The style and strength to render: defaults for None; Refused (BAD_INPUT) for a
        style that does not exist or a strength it does not have."""
        name = self.default if style is None else style
        info = self.view.get(name)
        if info is None:
            raise Refused(RefusalKind.BAD_INPUT, texts.unknown_style(name, list(self.view)))
        if strength is None:
            return name, info.default_strength
        if strength not in info.strengths:
            text = texts.bad_strength(strength, info.label, info.strengths)
            raise Refused(RefusalKind.BAD_INPUT, text)
        return name, strength

    def at_level(self, style: str | None, level: int | None) -> tuple[str, int]:
        """The style and the strength of its toon level `level` (1: closest to the photo), as
        users pick it; Refused (BAD_INPUT) for a level the style does not have."""
        name, default = self.choose(style, None)
        if level is None:
            return name, default
        info = self.view[name]
        if not 1 <= level <= len(info.strengths):
            text = texts.bad_level(level, info.label, len(info.strengths))
            raise Refused(RefusalKind.BAD_INPUT, text)
        return name, info.strengths[level - 1]

    def step(self, style: str, strength: int, steps: int) -> int:
        """`steps` strengths up (more toon) or down from `strength`, stopping at the ends."""
        strengths = self.view[style].strengths
        index = strengths.index(strength) + steps
        return strengths[min(max(index, 0), len(strengths) - 1)]

    def switch(self, style: str, strength: int) -> tuple[str, int]:
        """Another style at the same strength when it has it, else at its default."""
        name, _ = self.choose(style, None)
        info = self.view[name]
        return name, strength if strength in info.strengths else info.default_strength

    def can_change(self, style: str, strength: int) -> tuple[bool, bool]:
        """Whether there is less toon and more toon than `strength`."""
        strengths = self.view[style].strengths
        return strength != strengths[0], strength != strengths[-1]
