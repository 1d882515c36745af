"""Progress of the command line's batches on stderr.

On a terminal: a tqdm bar over the images (rate and ETA), the tiles of a tiled image in its postfix,
and messages written above the bar. Elsewhere (a log file, a pipe): one line per image,
``[i/n] <what> (<seconds> s, ETA <h:mm:ss>)``, and, for an image that runs in tiles, a line
``[i/n] <name>: tile k/t`` at most every :data:`TILE_LINE_SECONDS`. ``quiet`` shows no progress;
messages (:meth:`Progress.write`) are shown either way. Nothing is written to stdout.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "TILE_LINE_SECONDS"]

TILE_LINE_SECONDS = 10.0
BAR_REFRESH_SECONDS = 0.1


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress over ``total`` images. ``delay``: on a terminal, show the bar only once the batch
    has run that many seconds; ``lines``: write the per-image lines when not on a terminal."""

    def __init__(self, total: int, desc: str, *, quiet: bool = False, stream: TextIO | None = None,
                 delay: float = 0.0, lines: bool = True, unit: str = "image"):
        self.stream = sys.stderr if stream is None else stream
        self.total = total
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.lines = lines
        self.done = 0
        self.start = time.monotonic()
        self._name = ""
        self._last_tile_line = 0.0
        self._last_refresh = 0.0
        self.bar = None
        if self.tty and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, delay=delay, leave=True,
                            dynamic_ncols=True)

    def begin(self, name: str) -> None:
        """Image ``name`` starts."""
        self._name = name
        self._last_tile_line = time.monotonic()
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=True)

    def tile(self, done: int, total: int) -> None:
        """``done`` of the ``total`` tiles of the current image are finished."""
        if self.quiet:
            return
        if self.bar is not None:
            now = time.monotonic()  # redrawn at most every BAR_REFRESH_SECONDS (tiles are milliseconds on a GPU)
            refresh = done == total or now - self._last_refresh >= BAR_REFRESH_SECONDS
            self.bar.set_postfix_str(f"{self._name}: tile {done}/{total}", refresh=refresh)
            if refresh:
                self._last_refresh = now
        elif self.lines and done < total and time.monotonic() - self._last_tile_line >= TILE_LINE_SECONDS:
            self._last_tile_line = time.monotonic()
            self._print(f"[{self.done + 1}/{self.total}] {self._name}: tile {done}/{total}")

    def step(self, text: str, seconds: float | None = None) -> None:
        """One image is finished (written, scored or skipped); ``text`` says what was done."""
        self.done += 1
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(1)
            return
        if not self.lines:
            return
        elapsed = time.monotonic() - self.start
        timing = [] if seconds is None else [f"{seconds:.2f} s"]
        if self.done < self.total:
            timing.append(f"ETA {_clock(elapsed / self.done * (self.total - self.done))}")
        self._print(f"[{self.done}/{self.total}] {text}" + (f" ({', '.join(timing)})" if timing else ""))

    def write(self, text: str) -> None:
        """A message (a skipped image, a note): a line of its own, shown even when quiet."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self._print(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
