"""One live progress line for a long run: a redrawn bar in a terminal, a periodic plain line otherwise.

In a terminal (stderr is a TTY) the line is redrawn in place every `TTY_REFRESH_S`. In logs, `ray job logs`
and CI (not a TTY) a full line is printed every `interval_s` (default $YOLORAY_PROGRESS_S, else 10 s), plus a
last one when the run ends, so a job's log shows where it stands without flooding it.

    line = LiveLine("infer", render)     # render(elapsed_s) -> the text of the line
    line.start()                         # a daemon thread redraws / prints until close()
    ...
    line.close()                         # final line (kept on screen in a terminal)

`Rate` turns a done/total count into the usual fields (rate, ETA, a bar) for `render`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

INTERVAL_ENV = "YOLORAY_PROGRESS_S"
DEFAULT_INTERVAL_S = 10.0
TTY_REFRESH_S = 0.5
BAR_WIDTH = 24


def default_interval() -> float:
    try:
        return max(0.1, float(os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S


def duration(seconds: float) -> str:
    """0:07, 3:25, 1:02:03."""
    s = int(max(0, seconds) + 0.5)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Rate:
    """done/total of one quantity, with its rate since `start` (over what was done after `base`) and an ETA
    when the total is known."""

    def __init__(self, total: int | None = None, start: float | None = None):
        self.total = total
        self.done = 0
        self.base = 0  # done at `start` (not counted in the rate)
        self.start = time.perf_counter() if start is None else start

    def fields(self, noun: str, now: float | None = None, tty: bool = False) -> str:
        """'frames 120/480 (25%) 31.0 frames/s ETA 0:12', with a bar in front in a terminal."""
        now = time.perf_counter() if now is None else now
        elapsed = max(1e-9, now - self.start)
        rate = (self.done - self.base) / elapsed
        if self.total:
            frac = min(1.0, self.done / self.total)
            text = f"{noun} {self.done:,}/{self.total:,} ({frac:.0%})"
            if tty:
                text = f"{bar(frac)} {text}"
        else:
            text = f"{noun} {self.done:,}"
        text += f"  {rate:,.1f} {noun}/s"
        if self.total and 0 < self.done < self.total and rate > 0:
            text += f"  ETA {duration((self.total - self.done) / rate)}"
        return text


class LiveLine:
    """Prints `prefix: render(elapsed)` live (see the module docstring); thread-safe, idempotent close()."""

    def __init__(self, prefix: str, render: Callable[[float], str], stream: TextIO | None = None,
                 interval_s: float | None = None, tty: bool | None = None):
        self.prefix = prefix
        self.render = render
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = TTY_REFRESH_S if self.tty else (interval_s or default_interval())
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._width = 0
        self.lines = 0  # lines printed so far (periodic mode)

    def start(self) -> LiveLine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"progress-{self.prefix}", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.draw()

    def draw(self, final: bool = False) -> None:
        try:
            text = f"{self.prefix}: {self.render(time.perf_counter() - self.t0)}"
        except Exception as e:  # progress must never fail the run
            text = f"{self.prefix}: (progress unavailable: {type(e).__name__}: {e})"
        with self._lock:
            if self.tty:
                pad = " " * max(0, self._width - len(text))
                self.stream.write("\r" + text + pad + ("\n" if final else ""))
                self._width = 0 if final else len(text)
            else:
                self.stream.write(text + "\n")
                self.lines += 1
            self.stream.flush()

    def close(self, final: bool = True) -> None:
        """Stop redrawing; print the last state (final=True) or clear the line in a terminal."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if final:
            self.draw(final=True)
        elif self.tty and self._width:
            with self._lock:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()

    def __enter__(self) -> LiveLine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
