"""What a fit shows on the console: one log line per iteration, and a progress bar.

Log lines (``dask_em`` loggers, INFO and up) go to stdout.  When stderr is a terminal,
a one-line progress bar is kept at the bottom of it, redrawn after each iteration and
cleared before each log line, so the two never mix; otherwise there is no bar.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from typing import IO, Any

BAR_WIDTH = 24


class Console(logging.Handler):
    """A logging handler for the ``dask_em`` loggers and a per-iteration callback.

    Use as a context manager around a fit; pass :meth:`iteration` as a fit callback.
    """

    def __init__(
        self,
        title: str,
        max_iter: int,
        *,
        quiet: bool = False,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
        bar: bool | None = None,
    ):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.title = title
        self.max_iter = max_iter
        self.quiet = quiet
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        if bar is None:
            bar = not quiet and _is_terminal(self.err)
        self.bar = bar
        self._line = ""
        self._out_closed = False
        self._started = time.perf_counter()
        self._logger = logging.getLogger("dask_em")
        self._previous_level = self._logger.level
        self._previous_showwarning = warnings.showwarning

    # -- context ---------------------------------------------------------------------
    def __enter__(self) -> Console:
        if not self.quiet:
            self._logger.addHandler(self)
            self._logger.setLevel(logging.INFO)
        self._previous_showwarning = warnings.showwarning
        warnings.showwarning = self._show_warning
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._previous_level)
        warnings.showwarning = self._previous_showwarning
        if self._line:
            self._clear()
            self._line = ""

    # -- logging ---------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if self._line:
                self._clear()
            if not self._out_closed:
                self.out.write(message + "\n")
                self.out.flush()
            if self._line:
                self._draw()
        except BrokenPipeError:  # stdout closed (``| head``): the fit goes on, silently
            self._out_closed = True
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)

    def _show_warning(self, message, category, filename, lineno, file=None, line=None):
        """Warnings (e.g. ConvergenceWarning) as one line on stderr, not four."""
        if self._line:
            self._clear()
        text = " ".join(str(message).split())
        self.err.write(f"dask-em: {category.__name__}: {text}\n")
        self.err.flush()
        if self._line:
            self._draw()

    # -- the bar ---------------------------------------------------------------------
    def iteration(self, record: Any, params: Any = None) -> None:
        """Fit callback: redraw the bar after ``record`` (an ``IterationRecord``)."""
        if not self.bar:
            return
        done = min(1.0, record.iteration / max(1, self.max_iter))
        filled = round(done * BAR_WIDTH)
        change = "" if not math.isfinite(record.change) else f"  change {record.change:.2e}"
        elapsed = time.perf_counter() - self._started
        self._line = (
            f"{self.title} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] "
            f"{record.iteration}/{self.max_iter}  objective {record.objective:.8g}{change}"
            f"  {record.seconds:.2f} s/it  {elapsed:.0f} s"
        )
        self._draw()

    def _draw(self) -> None:
        self.err.write("\r\x1b[K" + self._line)
        self.err.flush()

    def _clear(self) -> None:
        self.err.write("\r\x1b[K")
        self.err.flush()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
