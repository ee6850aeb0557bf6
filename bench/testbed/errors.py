"""The builder's one error type: a problem in an input or a step, reported as one line."""

from __future__ import annotations


class BuildError(Exception):
    """The build cannot go on; the message names the file or step at fault (one line)."""
