"""Errors that reach the user as one line (the CLI prints them and exits 2)."""

from __future__ import annotations


class OpdwatchError(Exception):
    """A problem the user can fix: bad input, a path that is not a run, a bad config value.

    The message is a single line that names the thing and what is wrong with it. The CLI prints
    ``opdwatch: error: <message>`` on stderr and exits with code 2, never a traceback.
    """


class NotARunError(OpdwatchError):
    """The path exists but holds no opdwatch run (no manifest)."""


class FormatVersionError(OpdwatchError):
    """The run was written by a newer or unknown run-format version."""


class CorruptRunError(OpdwatchError):
    """A file that a reader cannot skip (the manifest) is unreadable."""
