"""Everything before evaluation: corpora, local models, collection, and the columnar store.

The data flow, in the order a run uses it:

- ``prepare`` (corpus -> fine-tuning share + held-out ``val``/``test`` chunks, the request
  manifest; GPT-2's BPE offline) and ``finetune`` (the training file; an API job or a local run);
- ``serve`` (local Hugging Face models behind an OpenAI-compatible API) and ``collect``
  (every role's log-probabilities from such endpoints into append-only raw files, and a deep
  sample, ``deep_sample``);
- ``parse`` (every response format into per-position arrays, validated, matched to the
  ``manifest``'s requests by content where it can be), ``align``ed across models, then ``topk``,
  ``union`` (the candidate layout) and ``store`` (schema, atomic writing, reading, consistency),
  put together by ``build`` (``ingest_responses``); ``quirks`` names what reading tolerated.

Shared by all: ``errors`` (the one error type, naming file, line and field), ``atomic``,
``jsonl``, ``tokens`` (token strings and bytes, the shared vocabulary), ``jit`` (Numba options),
``server_text`` (every openai client, whose answers are redacted where they enter; a server's
error as one line).
``ingest`` never imports ``engine``.

    from ingest import ingest_responses, open_store
    path = ingest_responses(["small.jsonl.gz", "big.jsonl.gz"], requests="requests.jsonl", out="store")
    store = open_store(path)
"""

from ingest.build import ingest_responses
from ingest.errors import IngestError
from ingest.store import Candidates, Store, StoreError
from ingest.store_open import open_store

__all__ = ["Candidates", "IngestError", "Store", "StoreError", "ingest_responses", "open_store"]
