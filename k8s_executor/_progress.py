"""A live bar of calls done / running / pending / failed (``progress=True``).

Dispatch must not slow down for it: the executor's threads only bump counters under a
small lock, and one daemon thread per bar redraws it a few times a second. The bar is
tqdm's (``tqdm.auto``: a widget in a Jupyter notebook, text in a terminal), imported
only when a bar is shown.

A note says why calls wait, when the cluster says so (``waiting for quota: ...``,
``queued: <Kueue's message>``, ``CreateContainerConfigError: secret "x" not found``): the
bar shows it after its counters, and a log (stderr not a terminal) gets a line as soon as
it changes rather than at the next periodic line.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, TextIO

from .errors import ConfigError

_INTERVAL = 0.2  # seconds between redraws in a terminal or notebook
_PIPE_INTERVAL = 10.0  # ... and when stderr is a file or a pipe (a log, not a screen)
_PIPE_MIN_GAP = 1.0  # a log gets at most a line a second, however often the note changes


def wanted(progress: bool | None) -> bool:
    """Whether to show a bar: as asked, else K8S_EXECUTOR_PROGRESS, else only where a
    person is looking (stderr is a terminal, or a Jupyter kernel runs us)."""
    if progress is not None:
        if not isinstance(progress, bool):
            raise ConfigError(f"progress={progress!r} is not allowed: expected True, False or None")
        return progress
    env = os.environ.get("K8S_EXECUTOR_PROGRESS", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    if env:
        raise ConfigError(
            f"K8S_EXECUTOR_PROGRESS={env!r} is not allowed: expected 1/true/on or 0/false/off"
        )
    return _interactive(sys.stderr)


def _interactive(stream: TextIO | None) -> bool:
    if "ipykernel" in sys.modules:
        return True
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Counts of one set of calls, drawn as one bar until :meth:`close` (or, when
    :meth:`seal` was called, until every call is done)."""

    def __init__(self, description: str, *, total: int = 0) -> None:
        self._lock = threading.Lock()
        self.total = total
        self.done = 0
        self.running = 0
        self.failed = 0
        self.cancelled = 0
        self.reused = 0  # a named run's calls resolved from their stored results
        self.speculating = 0  # duplicates of straggling indexes running now (_speculate)
        self.duplicated = 0  # duplicates started in all
        self._sealed = False
        self._note = ""
        self._closed = threading.Event()
        self._wake = threading.Event()  # redraw now: closed, or the note changed
        self._description = description
        self._thread = threading.Thread(target=self._draw, name="k8sx-progress", daemon=True)
        self._thread.start()

    # -- counters (any thread; cheap) ---------------------------------------------

    def add(self, calls: int) -> None:
        """``calls`` more calls were submitted."""
        with self._lock:
            self.total += calls

    def started(self, calls: int) -> None:
        """``calls`` calls began running."""
        with self._lock:
            self.running += calls

    def finished(
        self,
        calls: int,
        *,
        was_running: bool,
        failed: bool,
        cancelled: bool,
        reused: bool = False,
    ) -> None:
        """``calls`` calls ended: with a result, an error, or cancelled; ``reused``: with
        a named run's stored result, without running again."""
        with self._lock:
            self.done += calls
            if reused:
                self.reused += calls
            if was_running:
                self.running -= calls
            if cancelled:
                self.cancelled += calls
            elif failed:
                self.failed += calls
            if self._sealed and self.done >= self.total:
                self._stop()  # the last call: draw the end now, not at the next tick

    def speculative(self, delta: int) -> None:
        """A duplicate of a straggling index started (``+1``) or ended (``-1``)."""
        with self._lock:
            self.speculating += delta
            if delta > 0:
                self.duplicated += delta

    def seal(self) -> None:
        """No more calls will be added: close the bar once they are all done."""
        with self._lock:
            self._sealed = True
            if self.done >= self.total:
                self._stop()

    def note(self, text: str) -> None:
        """Show why calls wait (one line of text; "" clears it), until changed or cleared."""
        text = " ".join(text.split())  # one line: a message may hold newlines
        with self._lock:
            if text == self._note:
                return
            self._note = text
        self._wake.set()

    def clear_note(self) -> None:
        """Stop showing the note: nothing known holds the calls up any more."""
        self.note("")

    def close(self) -> None:
        """Draw the final state and stop; waits for the drawing thread."""
        self._stop()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def text(self) -> str:
        """The counters as the bar's suffix shows them, then the note if there is one."""
        with self._lock:
            pending = self.total - self.done - self.running
            parts = [f"running={self.running}", f"pending={pending}", f"failed={self.failed}"]
            if self.cancelled:
                parts.append(f"cancelled={self.cancelled}")
            if self.reused:
                parts.append(f"reused={self.reused}")
            if self.duplicated:
                # Running now / started in all (Batching.speculate).
                parts.append(f"speculative={self.speculating}/{self.duplicated}")
            note = self._note
        return " ".join(parts) + (f"; {note}" if note else "")

    def _stop(self) -> None:
        self._closed.set()
        self._wake.set()

    # -- drawing thread -----------------------------------------------------------

    def _draw(self) -> None:
        stream = sys.stderr
        if not _interactive(stream):
            self._draw_lines(stream)
            return
        from tqdm.auto import tqdm

        interval = _INTERVAL
        bar: Any = tqdm(
            total=self.total,
            desc=self._description,
            unit="call",
            file=stream,
            dynamic_ncols=True,
            mininterval=0,
            leave=True,
        )
        try:
            while True:
                self._wake.wait(interval)
                self._wake.clear()
                stop = self._closed.is_set()
                with self._lock:
                    finished = self._sealed and self.done >= self.total
                self._render(bar)
                if stop or finished:
                    return
        finally:
            bar.close()

    def _draw_lines(self, stream: TextIO) -> None:
        """Into a file or a pipe (a log, CI output): a plain line now and then, when
        something changed, at once when the note changed, and the last state; no carriage
        returns, no cursor codes."""
        last = ""
        while True:
            self._wake.wait(_PIPE_INTERVAL)
            self._wake.clear()
            stop = self._closed.is_set()
            with self._lock:
                finished = self._sealed and self.done >= self.total
                total, done = self.total, self.done
            line = f"{self._description}: {done}/{total} calls done, {self.text()}"
            if line != last:
                print(line, file=stream, flush=True)
                last = line
            if stop or finished:
                return
            self._closed.wait(_PIPE_MIN_GAP)

    def _render(self, bar: Any) -> None:
        with self._lock:
            total, done = self.total, self.done
        bar.total = total
        bar.n = done
        bar.set_postfix_str(self.text(), refresh=False)
        bar.refresh()
