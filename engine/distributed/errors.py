"""What goes wrong with a cluster."""

from __future__ import annotations

__all__ = ["ClusterError"]


class ClusterError(ConnectionError):
    """A Ray cluster that cannot be reached, or a worker lost for good (an ``OSError``: the CLI
    prints it as one line)."""
