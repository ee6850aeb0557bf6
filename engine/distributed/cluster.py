"""A Ray cluster to evaluate and tune blends on: ``connect`` to one (or start a local one), then
``Cluster.distribute`` a blend over its workers (``engine.distributed.blend.RayBlend``).

    >>> from engine.distributed import connect
    >>> with connect("local:2") as cluster:          # or "auto", "HOST:6379"
    ...     blend = cluster.distribute(ds.blend(big=..., tuned=..., untuned=...))
    ...     report = blend.evaluate([1.0, 1.0, -1.0])  # the same figures, summed over 2 workers

Ray is an optional dependency (``pip install 'approxft[ray]'``), imported here only.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ClusterError
from .worker import BlendWorker, ShardPart

if TYPE_CHECKING:
    from ..blend import Blend

__all__ = ["CONNECT_TIMEOUT", "RESTARTS", "Cluster", "ClusterError", "connect"]

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a cluster's address to answer before giving up (Ray itself waits minutes
for an address nothing listens on)."""
RESTARTS = 3
"""How often Ray restarts a worker that died (its part of the matrix is rebuilt from the copy the
driver keeps in the object store) and retries the calls it was running; a trial fails only once a
worker has died more often than this."""
LOCAL = "local"
GCS_WAIT = "RAY_gcs_server_port_wait_time_s"
DEFAULT_PORT = 6379


@dataclass
class Cluster:
    """A connection to a Ray cluster, and the workers each distributed blend starts on it.

    Attributes:
        address: what was connected to (``local:N`` for a cluster this process started).
        workers: Ray actors per distributed blend (each holds one part of its candidate matrix,
            one CPU each).
        restarts: ``RESTARTS`` for the workers of blends made after this is set.
    """

    address: str
    workers: int
    restarts: int = RESTARTS

    def distribute(self, blend: Blend) -> Blend:
        """``blend`` evaluated on this cluster's workers, with the same figures (within 1e-12
        relative: the sums add up in another order). A corrected blend keeps its sample's side
        on the driver (a few hundred positions) and distributes its base. A streaming blend
        (``engine.streaming``, a sharded store) is dealt by shards, which the workers read
        themselves from the store's folder: every node must see it at the same path. A masked
        blend (``engine.masked_blend``) distributes its masked matrix, or its masked source (each
        worker masks the shards it reads), and keeps what the mask drops on the driver."""
        import ray

        from ..correction import CorrectedBlend
        from ..masked_blend import MaskedBlend
        from ..streaming import StreamingBlend
        from .blend import (
            RayBlend,
            assignment,
            shard_assignment,
            worker_part,
        )

        if isinstance(blend, CorrectedBlend):
            return CorrectedBlend(self.distribute(blend.base), blend.sample)
        if isinstance(blend, MaskedBlend):
            return MaskedBlend(self.distribute(blend.inner), blend.mask, blend.floor, blend.outside)
        remote = ray.remote(BlendWorker).options(num_cpus=1, max_restarts=self.restarts, max_task_retries=self.restarts)
        if isinstance(blend, StreamingBlend):  # each worker reads its shards; a restarted one reads them again
            store = blend.dataset.store
            shards = shard_assignment(store, self.workers)
            parts = [ShardPart(blend.source, mine, blend.dataset.layout) for mine in shards]
            return RayBlend(blend, None, parts, [remote.remote(part) for part in parts], restarts=self.restarts)
        if blend.matrix is None:
            raise ValueError(f"{blend.estimator}: no candidate matrix to distribute (it is built chunk by chunk)")
        rows = assignment(blend.dataset.n_positions, self.workers)
        # The driver keeps each part in the object store: a worker that dies restarts from it.
        parts = [ray.put(worker_part(blend.matrix, r)) for r in rows]
        return RayBlend(blend, rows, parts, [remote.remote(part) for part in parts], restarts=self.restarts)

    def describe(self) -> dict[str, Any]:
        """What the JSON output says about where it ran: ``{"address", "workers", "cpus"}``."""
        import ray

        return {"address": self.address, "workers": self.workers, "cpus": int(ray.cluster_resources().get("CPU", 0))}

    def close(self) -> None:
        """Stop the workers and disconnect (a local cluster stops)."""
        import ray

        ray.shutdown()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(address: str, *, workers: int | None = None) -> Cluster:
    """Connect to the Ray cluster at ``address``, or start a local one.

    Args:
        address: ``HOST:PORT`` (a head node's GCS address, from ``ray start --head``; port 6379 if
            omitted), ``auto`` (the cluster this machine is part of, or ``RAY_ADDRESS``),
            ``local`` or ``local:N`` (start a cluster in this process with N CPUs; default: all).
        workers: Ray actors per distributed blend; default: one per CPU of the cluster.

    Raises:
        ClusterError: nothing answers at ``address`` within ``CONNECT_TIMEOUT`` seconds, no
            cluster to join, or ``workers`` more than the cluster's CPUs.
        ValueError: a malformed address, ``workers`` < 1, or Ray not installed.
    """
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'approxft[ray]'") from None
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    quiet = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    kind, _, rest = address.partition(":")
    if kind == LOCAL:
        ray.init(num_cpus=_count(rest, address) if rest else os.cpu_count(), **quiet)
    else:
        if address != "auto":
            _answers(address)
        # Ray retries an address that answers but is no Ray head for 20 s; this bounds it.
        before = os.environ.get(GCS_WAIT)
        os.environ[GCS_WAIT] = before or str(round(CONNECT_TIMEOUT))
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as err:
            raise ClusterError(f"Ray cluster {address}: {err}") from None
        finally:
            if before is None:
                del os.environ[GCS_WAIT]
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if workers is not None and workers > cpus:
        ray.shutdown()
        raise ClusterError(f"Ray cluster {address} has {cpus} CPUs, fewer than the {workers} workers asked for "
                           "(one CPU each)")
    return Cluster(address=address, workers=workers or max(1, cpus))


def _count(text: str, address: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"Ray address {address!r}: expected {LOCAL}:N with N a positive number of CPUs")
    return int(text)


def _answers(address: str) -> None:
    """Check that something listens at ``HOST[:PORT]`` (within ``CONNECT_TIMEOUT``)."""
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = address, str(DEFAULT_PORT)
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r}: expected HOST:PORT, auto, {LOCAL} or {LOCAL}:N")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        raise ClusterError(f"Ray cluster {address} cannot be reached ({err.strerror or err}); start one with "
                           f"`ray start --head` and pass its address (HOST:{DEFAULT_PORT})") from None
