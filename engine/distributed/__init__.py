"""Evaluation and tuning on a Ray cluster: ``connect`` to one, ``Cluster.distribute`` a blend, then
evaluate or tune it as any other (``engine.tuning.tune``, ``engine.evaluation.evaluate``).

    >>> import engine
    >>> from engine.distributed import connect
    >>> ds = engine.open_dataset("grimm.store")
    >>> with connect("HOST:6379") as cluster:              # or "auto", "local:2"
    ...     blend = cluster.distribute(ds.blend(big="grimm-big", tuned="grimm-small-tuned",
    ...                                         untuned="grimm-small"))
    ...     found = engine.tuning.tune(blend, method="newton")

Needs Ray (``pip install 'approxft[ray]'``); nothing else in the engine imports it.
"""

from .cluster import CONNECT_TIMEOUT, RESTARTS, Cluster, connect
from .errors import ClusterError

__all__ = ["CONNECT_TIMEOUT", "RESTARTS", "Cluster", "ClusterError", "connect"]
