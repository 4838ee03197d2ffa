"""The one exception type for user mistakes.

The CLI turns it into a single ``error: ...`` line and a non-zero exit; anything
else is a bug and keeps its traceback.
"""


import os

DEBUG_ENV = "TL_DEBUG"  # set (not "0"): tracebacks instead of one error line, libraries' own logs


def debug_enabled() -> bool:
    """Whether ``TL_DEBUG`` asks for tracebacks and the libraries' own log lines."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


class TLError(Exception):
    """A problem the user can fix; the message says how."""


def escaped(text: object) -> str:
    """A name from the file system or a file, safe inside a one-line message: control characters
    (newlines, terminal escape sequences) and undecodable bytes (surrogate escapes) as Python
    escapes (``\\n``, ``\\x1b``, ``\\udcff``); printable text, any script, unchanged."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def require(*rules: tuple[bool, str]) -> None:
    """Raise the message of the first ``(ok, message)`` rule that fails, as a TLError.

    Options dataclasses check their fields in ``__post_init__`` with it, so a bad value is
    refused when the options are built, before any folder is created or model loaded.
    """
    for ok, message in rules:
        if not ok:
            raise TLError(message)
