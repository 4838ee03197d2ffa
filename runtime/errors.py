"""The one exception type for user mistakes.

The CLI turns it into a single ``error: ...`` line and a non-zero exit; anything
else is a bug and keeps its traceback.
"""


class TLError(Exception):
    """A problem the user can fix; the message says how."""
