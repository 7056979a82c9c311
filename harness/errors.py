"""The command line's one kind of user mistake: `UsageError`. The command line prints its message
as one line (``paged-bench: <message>``), exits with status 2 and creates nothing; any other
exception is a bug and keeps its traceback."""

from __future__ import annotations


class UsageError(ValueError):
    """A bad value on the command line or in a file the user named; the message names the value and
    the choices."""
