"""The one console module: rich Consoles, progress bars and table rendering for the CLI.

Library code never prints; it reports through ``tl.runtime.progress.Reporter`` and returns
results. Commands build a :class:`RichReporter` here and render the returned results with
``print_table``. Imported only by commands (rich is a base dependency, torch is not needed).
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from tl.runtime.errors import escaped
from tl.runtime.progress import Reporter, Task

# Off a terminal rich assumes 80 columns and folds wide tables into unreadable cells;
# piped or captured output gets this width instead.
PIPE_WIDTH = 160


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """Text with its control characters as Python escapes (``\\x1b``, ``\\n``).

    File names and model files are data from anywhere: an ANSI escape sequence would recolour or
    clear the terminal, a carriage return or newline would split or forge a message line, a bidi
    override would reorder it. ``keep_newlines`` keeps the line breaks a message has by design.
    """
    if keep_newlines:
        return "\n".join(map(escaped, str(text).split("\n")))
    return escaped(text)


def shown(text: object) -> str:
    """Text that came from a file (class names, an arch) made safe to print in a rich table:
    control characters escaped (:func:`printable`) and rich markup (``[bold]``) as literal brackets."""
    return escape(printable(text))


def stdout_console(**kwargs: Any) -> Console:
    """Console for results (tables, summaries) on stdout."""
    kwargs.setdefault("width", None if sys.stdout.isatty() else PIPE_WIDTH)
    kwargs.setdefault("highlight", False)
    return Console(**kwargs)


def stderr_console(**kwargs: Any) -> Console:
    """Console for progress, messages and warnings on stderr."""
    kwargs.setdefault("highlight", False)
    return Console(stderr=True, **kwargs)


def print_table(table, console: Console | None = None) -> None:
    (console or stdout_console()).print(table)


class _RichTask(Task):
    def __init__(self, progress: Progress, description: str, total: int | None):
        self.progress = progress
        self.id = progress.add_task(description, total=total, note="")
        self.closed = False

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.id, n)

    def update(self, *, description: str | None = None, completed: int | None = None,
               total: int | None = None, note: str | None = None) -> None:
        fields: dict[str, Any] = {}
        if description is not None:
            fields["description"] = description
        if completed is not None:
            fields["completed"] = completed
        if total is not None:
            fields["total"] = total
        if note is not None:
            fields["note"] = note
        self.progress.update(self.id, **fields)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.progress.remove_task(self.id)


class RichReporter(Reporter):
    """Progress bars on stderr (only on a terminal unless ``force``), messages above them.

    Use as a context manager around the library call:

        with RichReporter() as reporter:
            result = fit(options, reporter=reporter)
    """

    def __init__(self, *, console: Console | None = None, progress: bool = True, quiet: bool = False):
        self.console = console or stderr_console(quiet=quiet)
        self.quiet = quiet
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=True, disable=quiet or not progress,
        )

    def __enter__(self) -> "RichReporter":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def task(self, description: str, total: int | None = None) -> Task:
        return _RichTask(self.progress, description, total)

    def info(self, text: str) -> None:
        self.progress.console.print(printable(text, keep_newlines=True), soft_wrap=True, highlight=False, markup=False)

    def warning(self, text: str) -> None:
        # One line: a warning names files (an unreadable image), and a name may hold a newline.
        self.progress.console.print(f"[yellow]warning:[/] {shown(text)}", soft_wrap=True, highlight=False)
