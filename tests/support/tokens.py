"""Where the runtime's bounded reading cuts a text (pglocalai.service.reading)."""

from __future__ import annotations

from pglocalai.service import reading


def forced_cuts(tok: object, text: str) -> int:
    """How many windows of ``text`` end where no cut is (then ids may differ there)."""
    cuts = tok.cuts  # type: ignore[attr-defined]
    windows = list(reading._windows(cuts, reading._Source(text), reading.WINDOW_CHARS, None))
    forced, pos = 0, 0
    for window in windows[:-1]:
        pos += len(window)
        forced += not cuts.at(text, pos)
    return forced
