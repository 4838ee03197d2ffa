"""How library code tells the person waiting what it is doing, without printing anything itself.

``tl.train.fit``, ``tl.export.export`` and ``tl.benchmarks.run`` take a ``reporter``; the
default, :class:`Reporter`, says nothing, so a server or a notebook can call them
silently. The CLI passes ``tl.console.RichReporter`` (progress bars on stderr, messages
above them). The shape follows a logger: a few methods, each optional to act on.
"""

from __future__ import annotations


class Task:
    """One unit of long work (an epoch, a calibration, a benchmark matrix); silent by default."""

    def advance(self, n: int = 1) -> None:
        """``n`` more steps are done."""

    def update(self, *, description: str | None = None, completed: int | None = None,
               total: int | None = None, note: str | None = None) -> None:
        """Change what the task shows; ``note`` is a short live figure (loss, accuracy)."""

    def close(self) -> None:
        """The task is over; a progress display removes it."""

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Reporter:
    """The silent reporter: every method does nothing. Subclass and override what you show."""

    def task(self, description: str, total: int | None = None) -> Task:
        """Start a task of ``total`` steps (None: unknown length)."""
        return Task()

    def info(self, text: str) -> None:
        """A line worth reading now (an epoch's metrics, a resumed run)."""

    def warning(self, text: str) -> None:
        """Something the user should know about that does not stop the work."""


SILENT = Reporter()
