"""Ingest echo-scored legacy-completions responses into the approxft columnar store.

    from ingest import ingest_responses, open_store
    path = ingest_responses(["small.jsonl.gz", "big.jsonl.gz"], requests="requests.jsonl", out="store")
    store = open_store(path)

Modules, in the order data flows: ``jsonl`` (plain/gzip JSON lines), ``manifest`` (requests.jsonl),
``completions`` (the pure per-response parser), ``responses`` (one model's file), ``tokens``
(bytes tokens, the shared vocabulary), ``align`` (same tokens in every model), ``topk`` (fixed
width lists), ``layout`` (the union candidate CSR, a Numba kernel), ``store`` (schema, atomic
writing, reader), ``build`` (``ingest_responses``).
"""

from ingest.build import ingest_responses
from ingest.errors import IngestError
from ingest.store import Candidates, Store, StoreError, open_store

__all__ = ["Candidates", "IngestError", "Store", "StoreError", "ingest_responses", "open_store"]
